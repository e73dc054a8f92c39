//! Scores of predictions against labels: accuracy and macro-F1 (the mean over classes of each
//! class's F1, so a rare class counts as much as a common one — what matters for spam/ham).

/// Fraction of predictions equal to the label.
pub fn accuracy(pred: &[u32], y: &[u32]) -> f32 {
    let correct = pred.iter().zip(y).filter(|(p, l)| p == l).count();
    correct as f32 / y.len().max(1) as f32
}

/// F1 of every class 0..classes (0 for a class with no true and no predicted example).
pub fn f1_per_class(pred: &[u32], y: &[u32], classes: usize) -> Vec<f32> {
    let mut tp = vec![0usize; classes];
    let mut fp = vec![0usize; classes];
    let mut fneg = vec![0usize; classes];
    for (&p, &l) in pred.iter().zip(y) {
        if p == l {
            tp[l as usize] += 1;
        } else {
            fp[p as usize] += 1;
            fneg[l as usize] += 1;
        }
    }
    (0..classes)
        .map(|c| {
            let denom = 2 * tp[c] + fp[c] + fneg[c];
            if denom == 0 {
                0.0
            } else {
                2.0 * tp[c] as f32 / denom as f32
            }
        })
        .collect()
}

/// Mean F1 over the classes present in the labels.
pub fn macro_f1(pred: &[u32], y: &[u32], classes: usize) -> f32 {
    let f1 = f1_per_class(pred, y, classes);
    let present: Vec<usize> = (0..classes).filter(|&c| y.contains(&(c as u32))).collect();
    present.iter().map(|&c| f1[c]).sum::<f32>() / present.len().max(1) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        let y = [0, 0, 0, 0, 1, 1];
        // Always predicting the majority: accuracy 4/6, F1 0.8 and 0 → macro 0.4.
        let pred = [0, 0, 0, 0, 0, 0];
        assert!((accuracy(&pred, &y) - 4.0 / 6.0).abs() < 1e-6);
        assert!((macro_f1(&pred, &y, 2) - 0.4).abs() < 1e-6);
        // Perfect.
        assert_eq!(macro_f1(&y, &y, 2), 1.0);
        // One spam missed: class 0 P=4/5 R=1 → 8/9; class 1 P=1 R=1/2 → 2/3.
        let pred = [0, 0, 0, 0, 1, 0];
        let want = (8.0 / 9.0 + 2.0 / 3.0) / 2.0;
        assert!((macro_f1(&pred, &y, 2) - want).abs() < 1e-6);
    }
}
