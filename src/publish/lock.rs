//! The output lock: one writer at a time, on local disk and on object storage.
//!
//! `_lock` is created with a create-only put (`PutMode::Create`, If-None-Match on S3) and
//! names its holder. The holder refreshes its heartbeat while it runs: on object storage by
//! a conditional put on the etag it holds (`PutMode::Update`, If-Match), on local disk
//! (which has no `Update`) by writing a temp file and renaming it over `_lock` after
//! checking the lock is still its own. A lock whose process is gone (same host) or whose
//! last heartbeat is older than `lock_timeout` is stale and taken over: on object storage
//! by an If-Match put on the etag that was read, on local disk by rename-and-verify.
//! A conditional put is not retried after an ambiguous failure (timeout, reset), so after
//! one the lock is read back and its run id compared.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};
use tracing::{error, warn};

use super::Output;
use crate::error::{Error, Result};
use crate::redact::redact;

const LOCK: &str = "_lock";

/// Who holds the output lock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    pub run_id: String,
    pub host: String,
    pub pid: u32,
    pub started_at: DateTime<Utc>,
    /// Refreshed while the run is alive; staleness is judged by it.
    #[serde(default)]
    pub heartbeat_at: Option<DateTime<Utc>>,
}

impl std::fmt::Display for LockInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "run {} (host {}, pid {}, started {}",
            self.run_id,
            self.host,
            self.pid,
            self.started_at.to_rfc3339()
        )?;
        if let Some(h) = self.heartbeat_at {
            write!(f, ", last heartbeat {}", h.to_rfc3339())?;
        }
        write!(f, ")")
    }
}

impl LockInfo {
    /// A lock naming this process as a new run.
    pub fn new(run_id: &str, started_at: DateTime<Utc>) -> LockInfo {
        LockInfo {
            run_id: run_id.to_string(),
            host: host_name(),
            pid: std::process::id(),
            started_at,
            heartbeat_at: Some(started_at),
        }
    }

    /// Whether `self` (the lock found) belongs to a dead run, seen from `me`.
    pub fn is_stale(&self, me: &LockInfo, timeout: Duration, now: DateTime<Utc>) -> bool {
        let last = self.heartbeat_at.unwrap_or(self.started_at);
        let same_host = self.host == me.host;
        // Same pid as ours under another run id: a restarted container.
        (same_host && (self.pid == me.pid || !process_alive(self.pid)))
            || now
                .signed_duration_since(last)
                .to_std()
                .map(|a| a > timeout)
                .unwrap_or(false)
    }
}

/// The lock held by this run.
pub struct OutputLock {
    output: Output,
    info: Mutex<LockInfo>,
    /// The etag of the lock as last written (object storage).
    version: Mutex<Option<UpdateVersion>>,
    /// Serialises heartbeats with the final ownership check.
    busy: tokio::sync::Mutex<()>,
}

fn encode(info: &LockInfo, uri: &str) -> Result<PutPayload> {
    serde_json::to_vec_pretty(info)
        .map(PutPayload::from)
        .map_err(|e| super::out_err(uri, "encode _lock", e))
}

impl Output {
    /// Reads `_lock`: its holder (None if unreadable) and version; None if there is none.
    async fn read_lock(&self) -> Result<Option<(Option<LockInfo>, UpdateVersion)>> {
        match self.loc.store.get(&self.loc.path(LOCK)).await {
            Ok(r) => {
                let version = UpdateVersion {
                    e_tag: r.meta.e_tag.clone(),
                    version: r.meta.version.clone(),
                };
                let info = r
                    .bytes()
                    .await
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                Ok(Some((info, version)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("read _lock", e)),
        }
    }

    /// Takes the output lock; a stale lock is taken over. The caller then recovers what
    /// the dead run left behind ([`Output::recover`]).
    pub async fn acquire_lock(&self, me: &LockInfo, timeout: Duration) -> Result<OutputLock> {
        let path = self.loc.path(LOCK);
        let body = encode(me, &self.loc.uri)?;
        let mine = |version: UpdateVersion| OutputLock {
            output: self.clone(),
            info: Mutex::new(me.clone()),
            version: Mutex::new(Some(version)),
            busy: tokio::sync::Mutex::new(()),
        };
        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            let put = self.create_lock(&path, body.clone()).await;
            let err = match put {
                Ok(r) => return Ok(mine(r)),
                Err(e @ object_store::Error::AlreadyExists { .. }) => e,
                // Ambiguous (a conditional put is not retried after a timeout or reset):
                // the put may have landed. Read back and compare run ids.
                Err(e) => match self.read_lock().await? {
                    Some((Some(h), v)) if h.run_id == me.run_id => return Ok(mine(v)),
                    None if attempt < ATTEMPTS => {
                        warn!(error = %redact(&e.to_string()), "creating _lock failed; retrying");
                        continue;
                    }
                    None => return Err(self.err("create _lock", e)),
                    Some(_) => e,
                },
            };
            let Some((holder, version)) = self.read_lock().await? else {
                continue; // Released in between: try again.
            };
            let now = Utc::now();
            let stale = match &holder {
                Some(h) => h.is_stale(me, timeout, now),
                // Unreadable: judge by the object's age alone.
                None => match self.loc.store.head(&path).await {
                    Ok(meta) => now
                        .signed_duration_since(meta.last_modified)
                        .to_std()
                        .map(|a| a > timeout)
                        .unwrap_or(false),
                    Err(_) => false,
                },
            };
            if !stale {
                return Err(Error::Locked {
                    uri: self.loc.uri.clone(),
                    holder: holder
                        .map(|h| h.to_string())
                        .unwrap_or_else(|| format!("an unreadable _lock file ({err})")),
                });
            }
            if let Some(h) = &holder {
                warn!(holder = %h, "taking over a stale output lock");
            }
            if self.loc.local.is_some() {
                if self.take_over_local(holder.as_ref(), me).await? {
                    continue; // The stale lock is gone: create ours.
                }
                return Err(self.locked_by_current().await);
            }
            let put = self
                .loc
                .store
                .put_opts(
                    &path,
                    body.clone(),
                    PutOptions {
                        mode: PutMode::Update(version),
                        ..Default::default()
                    },
                )
                .await;
            match put {
                Ok(r) => return Ok(mine(r.into())),
                Err(object_store::Error::Precondition { .. }) => continue,
                Err(e) => {
                    return match self.read_lock().await? {
                        Some((Some(h), v)) if h.run_id == me.run_id => Ok(mine(v)),
                        _ => Err(self.err("take over stale _lock", e)),
                    }
                }
            }
        }
        Err(self.err(
            "create _lock",
            format!("lost the race for the lock {ATTEMPTS} times"),
        ))
    }

    /// The create-only put of `_lock`. On local disk segflow stages it itself, as
    /// `LocalFileSystem` does (`_lock#<n>`, then a hard link that fails when `_lock`
    /// exists), so that the failpoint `lock_staged` can stop a run between the two; a run
    /// killed there leaves `_lock#<n>`, which recovery removes ([`Output::recover`]).
    async fn create_lock(
        &self,
        path: &object_store::path::Path,
        body: PutPayload,
    ) -> object_store::Result<UpdateVersion> {
        let Some(root) = &self.loc.local else {
            let put = self
                .loc
                .store
                .put_opts(path, body, PutMode::Create.into())
                .await;
            return put.map(UpdateVersion::from);
        };
        let generic = |e: std::io::Error| object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(e),
        };
        let target = root.join(LOCK);
        let mut n = 1u32;
        let staged = loop {
            let staged = root.join(format!("{LOCK}#{n}"));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&staged)
            {
                Ok(mut file) => {
                    use std::io::Write;
                    for chunk in body.iter() {
                        file.write_all(chunk).map_err(generic)?;
                    }
                    file.sync_all().map_err(generic)?;
                    break staged;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
                Err(e) => return Err(generic(e)),
            }
        };
        crate::failpoint::hit("lock_staged").await;
        let linked = std::fs::hard_link(&staged, &target);
        let _ = std::fs::remove_file(&staged);
        match linked {
            Ok(()) => Ok(UpdateVersion {
                e_tag: None,
                version: None,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(object_store::Error::AlreadyExists {
                    path: target.display().to_string(),
                    source: Box::new(e),
                })
            }
            Err(e) => Err(generic(e)),
        }
    }

    /// The Locked error naming whoever holds the lock now.
    async fn locked_by_current(&self) -> Error {
        let holder = match self.read_lock().await {
            Ok(Some((Some(h), _))) => h.to_string(),
            _ => "another run".into(),
        };
        Error::Locked {
            uri: self.loc.uri.clone(),
            holder,
        }
    }

    /// Local disk: renames the stale lock aside and checks it is the one judged stale
    /// (another run may have taken over and locked in between). True when it was.
    async fn take_over_local(&self, judged: Option<&LockInfo>, me: &LockInfo) -> Result<bool> {
        let path = self.loc.path(LOCK);
        let aside = self.loc.path(&format!("_lock.takeover-{}", me.run_id));
        match self.loc.store.rename(&path, &aside).await {
            Ok(()) => {}
            Err(object_store::Error::NotFound { .. }) => return Ok(true),
            Err(e) => return Err(self.err("take over stale _lock", e)),
        }
        let taken: Option<LockInfo> = match self.loc.store.get(&aside).await {
            Ok(r) => r
                .bytes()
                .await
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok()),
            Err(_) => None,
        };
        if taken.as_ref().map(|t| &t.run_id) != judged.map(|h| &h.run_id) {
            // Not the stale lock: put it back.
            let _ = self.loc.store.rename_if_not_exists(&aside, &path).await;
            return Ok(false);
        }
        let _ = self.loc.store.delete(&aside).await;
        Ok(true)
    }
}

impl OutputLock {
    /// This run's id.
    pub fn run_id(&self) -> String {
        self.info
            .lock()
            .map(|i| i.run_id.clone())
            .unwrap_or_default()
    }

    /// Refreshes the heartbeat; fails if the lock is no longer this run's. Also the
    /// ownership check right before the manifest is written (a conditional put on S3).
    pub async fn heartbeat(&self) -> Result<()> {
        let _busy = self.busy.lock().await;
        let out = &self.output;
        let info = {
            let mut i = self
                .info
                .lock()
                .map_err(|_| out.err("refresh _lock", "lock state poisoned"))?;
            i.heartbeat_at = Some(Utc::now());
            i.clone()
        };
        let body = encode(&info, &out.loc.uri)?;
        let lost = |holder: String| Error::Locked {
            uri: out.loc.uri.clone(),
            holder: format!("this run's lock was taken over: {holder}"),
        };
        if let Some(root) = &out.loc.local {
            // Check, then replace by rename (LocalFileSystem has no conditional overwrite).
            match out.read_lock().await? {
                Some((Some(h), _)) if h.run_id == info.run_id => {}
                Some((h, _)) => {
                    return Err(lost(h.map(|h| h.to_string()).unwrap_or_default()));
                }
                None => return Err(lost("the lock disappeared".into())),
            }
            let tmp = root.join(format!("_lock.heartbeat-{}", info.run_id));
            let bytes = serde_json::to_vec_pretty(&info).map_err(|e| out.err("encode _lock", e))?;
            std::fs::write(&tmp, bytes).map_err(|e| Error::io("write", &tmp, e))?;
            std::fs::rename(&tmp, root.join(LOCK))
                .map_err(|e| Error::io("refresh lock", root.join(LOCK), e))?;
            return Ok(());
        }
        let version = self
            .version
            .lock()
            .map_err(|_| out.err("refresh _lock", "lock state poisoned"))?
            .clone();
        let Some(version) = version else {
            return Err(lost("the lock version is unknown".into()));
        };
        let put = out
            .loc
            .store
            .put_opts(
                &out.loc.path(LOCK),
                body,
                PutOptions {
                    mode: PutMode::Update(version),
                    ..Default::default()
                },
            )
            .await;
        let new_version = match put {
            Ok(r) => UpdateVersion::from(r),
            Err(object_store::Error::Precondition { .. }) => {
                let holder = match out.read_lock().await {
                    Ok(Some((Some(h), _))) => h.to_string(),
                    _ => "the lock changed".into(),
                };
                return Err(lost(holder));
            }
            Err(e) => match out.read_lock().await? {
                // The put may have landed before the connection failed.
                Some((Some(h), v)) if h.run_id == info.run_id => v,
                Some((h, _)) => {
                    return Err(lost(h.map(|h| h.to_string()).unwrap_or_default()));
                }
                None => return Err(out.err("refresh _lock", e)),
            },
        };
        if let Ok(mut v) = self.version.lock() {
            *v = Some(new_version);
        }
        Ok(())
    }

    /// Keeps the heartbeat going until the returned guard is dropped.
    pub fn keep_alive(self: &Arc<Self>, timeout: Duration) -> HeartbeatGuard {
        let every = (timeout / 4).clamp(Duration::from_millis(500), Duration::from_secs(60));
        let lock = self.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = lock.heartbeat().await {
                    error!(error = %e, "cannot refresh the output lock");
                    if matches!(e, Error::Locked { .. }) {
                        return;
                    }
                }
            }
        });
        HeartbeatGuard(task)
    }

    /// Releases the lock if this run still holds it.
    pub async fn release(&self) {
        let _busy = self.busy.lock().await;
        let out = &self.output;
        if let Ok(Some((Some(h), _))) = out.read_lock().await {
            if h.run_id == self.run_id() {
                if let Err(e) = out.delete_file(LOCK).await {
                    warn!(error = %e, "cannot remove the output lock");
                }
            }
        }
    }
}

/// Stops the heartbeat task when dropped.
pub struct HeartbeatGuard(tokio::task::JoinHandle<()>);

impl Drop for HeartbeatGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether a process with this pid exists on this host.
pub fn process_alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// This machine's host name.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if r != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(host: &str, pid: u32, age_s: i64, beat_s: Option<i64>) -> LockInfo {
        let now = Utc::now();
        LockInfo {
            run_id: "r".into(),
            host: host.into(),
            pid,
            started_at: now - chrono::Duration::seconds(age_s),
            heartbeat_at: beat_s.map(|b| now - chrono::Duration::seconds(b)),
        }
    }

    #[test]
    fn a_long_run_with_a_fresh_heartbeat_is_not_stale() {
        let me = LockInfo::new("me", Utc::now());
        let t = Duration::from_secs(600);
        // Started 5 hours ago on another host, heartbeat 10 s ago: alive.
        assert!(!lock("other", 1, 18000, Some(10)).is_stale(&me, t, Utc::now()));
        // Heartbeat 11 minutes ago: dead.
        assert!(lock("other", 1, 18000, Some(660)).is_stale(&me, t, Utc::now()));
        // An old-format lock without heartbeat is judged by its start.
        assert!(lock("other", 1, 700, None).is_stale(&me, t, Utc::now()));
    }

    #[test]
    fn a_dead_process_on_this_host_is_stale_at_once() {
        let me = LockInfo::new("me", Utc::now());
        let t = Duration::from_secs(600);
        assert!(lock(&me.host, 999_999_999, 1, Some(1)).is_stale(&me, t, Utc::now()));
        // Our own pid under another run id: a restarted container.
        assert!(lock(&me.host, me.pid, 1, Some(1)).is_stale(&me, t, Utc::now()));
        // A live process on this host (pid 1) is not.
        assert!(!lock(&me.host, 1, 1, Some(1)).is_stale(&me, t, Utc::now()));
    }
}
