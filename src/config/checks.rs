//! The range checks every config shares: each names the key and says what was expected and
//! what was found, in one wording, so a task's `validate` holds only the checks that carry a
//! reason of its own.

use std::fmt::Display;

use crate::error::{Error, Result};

/// A setting's number: compared as f64, printed as the user wrote it (an f32's 0.7, not
/// 0.699999988079071).
pub(crate) trait Number: Into<f64> + Copy + Display {}
impl<T: Into<f64> + Copy + Display> Number for T {}

/// A finite number > 0 (a rate, a temperature, a count that must not be 0).
pub(crate) fn positive<T: Number>(key: &str, v: T) -> Result<()> {
    let x: f64 = v.into();
    if x > 0.0 && x.is_finite() {
        Ok(())
    } else {
        Err(Error::config(
            key,
            format!("must be a finite number > 0, found {v}"),
        ))
    }
}

/// A finite number >= 0 (a loss weight, a noise level).
pub(crate) fn non_negative<T: Number>(key: &str, v: T) -> Result<()> {
    let x: f64 = v.into();
    if x >= 0.0 && x.is_finite() {
        Ok(())
    } else {
        Err(Error::config(key, format!("must be >= 0, found {v}")))
    }
}

/// A number in `[lo, hi]`.
pub(crate) fn in_range<T: Number>(key: &str, v: T, lo: f64, hi: f64) -> Result<()> {
    let x: f64 = v.into();
    if (lo..=hi).contains(&x) {
        Ok(())
    } else {
        Err(Error::config(
            key,
            format!("must be in [{lo}, {hi}], found {v}"),
        ))
    }
}

/// A number in `[lo, hi)` (a momentum, a moving-average decay: 1 would never move).
pub(crate) fn in_range_open<T: Number>(key: &str, v: T, lo: f64, hi: f64) -> Result<()> {
    let x: f64 = v.into();
    if (lo..hi).contains(&x) {
        Ok(())
    } else {
        Err(Error::config(
            key,
            format!("must be in [{lo}, {hi}), found {v}"),
        ))
    }
}

/// A fraction strictly between 0 and 1 (a mask ratio, Adam's β).
pub(crate) fn fraction_open<T: Number>(key: &str, v: T) -> Result<()> {
    let x: f64 = v.into();
    if x > 0.0 && x < 1.0 {
        Ok(())
    } else {
        Err(Error::config(key, format!("must be in (0, 1), found {v}")))
    }
}

/// A whole number in `lo..=hi`.
pub(crate) fn count_in(key: &str, v: usize, lo: usize, hi: usize) -> Result<()> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(Error::config(
            key,
            format!("must be in {lo}..={hi}, found {v}"),
        ))
    }
}

/// A size that must not be 0 (a width, a depth, a side).
pub(crate) fn at_least_one(key: &str, v: usize) -> Result<()> {
    if v >= 1 {
        Ok(())
    } else {
        Err(Error::config(key, "must be at least 1"))
    }
}

/// A backbone width (`width`; 0 = the backbone's default) no wider than [`super::MAX_WIDTH`].
pub(crate) fn width_at_most_max(width: usize) -> Result<()> {
    let max = super::MAX_WIDTH;
    if width <= max {
        Ok(())
    } else {
        Err(Error::config(
            "width",
            format!("must be at most {max} (0 = the backbone's default), found {width}"),
        ))
    }
}

/// The smallest share of the image a random resized crop keeps.
pub(crate) fn crop_scale<T: Number>(key: &str, v: T) -> Result<()> {
    in_range(key, v, 0.05, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(r: Result<()>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn each_check_names_the_key_and_the_value() {
        assert!(positive("lr", 1e-3).is_ok());
        assert!(message(positive("lr", 0.0)).contains("lr"));
        assert!(positive("lr", f64::INFINITY).is_err());
        assert!(non_negative("w", 0.0).is_ok());
        assert!(non_negative("w", f64::NAN).is_err());
        assert!(message(non_negative("w", -1.0)).contains("found -1"));
        assert!(in_range("p", 1.0, 0.0, 1.0).is_ok());
        assert!(in_range_open("m", 1.0, 0.0, 1.0).is_err());
        assert!(in_range_open("m", 0.0, 0.0, 1.0).is_ok());
        assert!(fraction_open("r", 0.0).is_err());
        assert!(fraction_open("r", 0.75).is_ok());
        assert!(message(count_in("pairs", 9, 1, 8)).contains("1..=8, found 9"));
        assert!(at_least_one("hidden", 0).is_err());
        assert!(message(crop_scale("c", 0.01)).contains("[0.05, 1], found 0.01"));
    }
}
