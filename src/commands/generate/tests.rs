use super::*;

fn options(lines: u64) -> GenerateOptions {
    GenerateOptions {
        lines,
        ..Default::default()
    }
}

#[test]
fn unit_draws_lie_in_the_open_interval_and_depend_on_every_key() {
    let base = unit(1, 2, 3, 4);
    assert!(base > 0.0 && base < 1.0);
    assert_eq!(base, unit(1, 2, 3, 4));
    for other in [
        unit(9, 2, 3, 4),
        unit(1, 9, 3, 4),
        unit(1, 2, 9, 4),
        unit(1, 2, 3, 9),
    ] {
        assert_ne!(base, other);
    }
    let n = 200_000;
    let mean = (0..n).map(|i| unit(7, i, 0, 1)).sum::<f64>() / n as f64;
    assert!((mean - 0.5).abs() < 0.005, "mean {mean}");
    assert!((0..n).all(|i| {
        let u = unit(7, 0, i, 1);
        u > 0.0 && u < 1.0
    }));
}

#[test]
fn weights_pick_in_proportion() {
    let w = Weights::new(LINES_PER_ORDER);
    let n = 100_000;
    let mut counts = [0u32; 5];
    for i in 0..n {
        counts[w.pick(unit(3, i, 0, 0))] += 1;
    }
    for (c, weight) in counts.iter().zip(LINES_PER_ORDER) {
        let share = *c as f64 / n as f64;
        assert!((share - weight / 100.0).abs() < 0.01, "{counts:?}");
    }
    assert_eq!(w.pick(0.9999999), 4);
}

#[test]
fn expected_lines_per_order_is_the_python_value() {
    // 2.62 lines + 0.97 * 0.05 * (1 + 0.5 * 1.62) refunds + 0.97 * 0.0002 * 2.62 dups
    let expected = 2.62 + 0.97 * 0.05 * 1.81 + 0.97 * 0.0002 * 2.62;
    assert!((expected_lines_per_order() - expected).abs() < 1e-12);
}

#[test]
fn written_schema_equals_the_demo_source_schema() {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/demo/orders/year=2024/part-0.parquet"
    );
    let file = std::fs::File::open(path).unwrap();
    let demo = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .schema()
        .clone();
    let ours = orders_schema();
    assert_eq!(demo.fields(), ours.fields());
}

#[test]
fn generate_rejects_bad_flags_naming_them() {
    let flag = |o: GenerateOptions| match Plan::new(&o) {
        Err(Error::Argument { flag, .. }) => flag,
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("accepted"),
    };
    assert_eq!(
        flag(GenerateOptions {
            customers: Some(1000),
            ..options(2000)
        }),
        "--lines"
    );
    assert_eq!(
        flag(GenerateOptions {
            months: 0,
            ..options(2000)
        }),
        "--months"
    );
    assert_eq!(
        flag(GenerateOptions {
            months: 601,
            ..options(2000)
        }),
        "--months"
    );
    assert_eq!(
        flag(GenerateOptions {
            end: "2026-02-30".into(),
            ..options(2000)
        }),
        "--end"
    );
    assert_eq!(flag(options(MAX_LINES + 1)), "--lines");
    assert_eq!(
        flag(GenerateOptions {
            customers: Some(0),
            ..options(2000)
        }),
        "--customers"
    );
}

#[test]
fn months_cover_the_period_up_to_the_end_day() {
    let plan = Plan::new(&GenerateOptions {
        months: 3,
        end: "2026-02-10".into(),
        ..options(2000)
    })
    .unwrap();
    let labels: Vec<_> = plan.months.iter().map(|m| m.label.as_str()).collect();
    assert_eq!(labels, ["2025-12", "2026-01", "2026-02"]);
    assert_eq!(plan.n_days, 31 + 31 + 10);
    assert_eq!(plan.months[2].first_day, 62);
    assert_eq!(plan.months[2].end_day, 72);
    // 2025-12-01T00:00:00Z .. 2026-02-10T23:59:59.999Z
    assert_eq!(plan.start_ms, 1_764_547_200_000);
    assert_eq!(plan.end_ms, plan.start_ms + 72 * DAY_MS - 1);
}

#[test]
fn calibration_hits_the_target_order_count() {
    let plan = Plan::new(&options(200_000)).unwrap();
    let stop = AtomicBool::new(false);
    let s = plan.calibrate(2, &stop).unwrap().unwrap();
    let target = 200_000.0 / expected_lines_per_order();
    let orders = plan.total_orders(s, 1, &stop).unwrap() as f64;
    assert!(
        (orders - target).abs() / target < 1e-3,
        "{orders} vs {target}"
    );
    // The thread count does not change the sum.
    assert_eq!(
        plan.total_orders(s, 1, &stop),
        plan.total_orders(s, 3, &stop)
    );
}

#[test]
fn skus_and_prices_follow_the_catalogue() {
    let plan = Plan::new(&options(2000)).unwrap();
    assert_eq!(plan.skus[0][41], "APP-00042");
    for (ci, c) in CATEGORIES.iter().enumerate() {
        for &p in &plan.unit_cents[ci] {
            assert!(p >= 199, "{p}");
            assert!(p <= (c.max_price as i64) * 100 + 99, "{} {p}", c.name);
            assert!([99, 95, 49, 0].contains(&(p % 100)) || p == 199);
        }
    }
}
