//! Summary statistics over repeated measurements.

use serde::Serialize;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Summary {
    pub runs: usize,
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Summary {
    /// `None` for an empty sample.
    pub fn of(samples: &[f64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Some(Self {
            runs: n,
            min: s[0],
            median,
            max: s[n - 1],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(Summary::of(&[3.0, 1.0, 2.0]).unwrap().median, 2.0);
        assert_eq!(Summary::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert_eq!(Summary::of(&[5.0, 1.0]).unwrap().min, 1.0);
        assert!(Summary::of(&[]).is_none());
    }
}
