//! How numbers are written in the report.

// Numbers as shown

pub(super) fn thousands(digits: &str) -> String {
    let (sign, digits) = match digits.strip_prefix('-') {
        Some(d) => ("-", d),
        None => ("", digits),
    };
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    format!("{sign}{out}")
}

pub(super) fn fmt_int(v: i64) -> String {
    thousands(&v.to_string())
}

pub(super) fn fmt_money(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    if v.abs() >= 1000.0 {
        thousands(&format!("{v:.0}"))
    } else {
        format!("{v:.2}")
    }
}

pub(super) fn fmt_pct(v: f64) -> String {
    format!("{:.1} %", v * 100.0)
}

pub(super) fn fmt_ratio(v: f64) -> String {
    format!("{v:.2}")
}

/// Axis ticks: shares as whole percentages.
pub(super) fn fmt_pct_axis(v: f64) -> String {
    format!("{:.0} %", v * 100.0)
}

/// Axis ticks: short money figures.
pub(super) fn fmt_axis(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1} M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0} k", v / 1e3)
    } else if a >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}
