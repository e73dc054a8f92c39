//! Learning-rate schedule, computed per step from the config: linear warm-up, then cosine decay
//! to `min_ratio · lr` at the last step.

pub fn lr_at(step: u64, base: f64, warmup: u64, total: u64, min_ratio: f64) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let t = ((step - warmup) as f64 / span).min(1.0);
    let cos = 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
    base * (min_ratio + (1.0 - min_ratio) * cos)
}

#[cfg(test)]
mod tests {
    use super::lr_at;

    #[test]
    fn warmup_then_cosine() {
        assert!((lr_at(0, 1.0, 10, 110, 0.0) - 0.1).abs() < 1e-12);
        assert!((lr_at(9, 1.0, 10, 110, 0.0) - 1.0).abs() < 1e-12);
        assert!((lr_at(10, 1.0, 10, 110, 0.0) - 1.0).abs() < 1e-12);
        assert!((lr_at(60, 1.0, 10, 110, 0.0) - 0.5).abs() < 1e-12);
        assert!((lr_at(110, 1.0, 10, 110, 0.1) - 0.1).abs() < 1e-12);
        assert_eq!(lr_at(5, 1.0, 0, 10, 0.0), lr_at(5, 1.0, 0, 10, 0.0));
    }
}
