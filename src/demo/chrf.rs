//! chrF (character n-gram F-score, Popović 2015) at corpus level, as sacreBLEU
//! computes it by default: character n-grams of orders 1 to 6 with whitespace removed,
//! statistics summed over the corpus, precision and recall averaged over the orders,
//! F-beta with beta = 2, scaled to 0..100.

use std::collections::HashMap;

const ORDER: usize = 6;
const BETA: f64 = 2.0;

fn ngrams(chars: &[char], n: usize) -> HashMap<&[char], usize> {
    let mut m = HashMap::new();
    if chars.len() >= n {
        for w in chars.windows(n) {
            *m.entry(w).or_insert(0) += 1;
        }
    }
    m
}

/// Corpus chrF of `hypotheses` against `references` (same length).
pub fn chrf(hypotheses: &[String], references: &[String]) -> f64 {
    let (mut matched, mut hyp_total, mut ref_total) = ([0usize; ORDER], [0usize; ORDER], [0usize; ORDER]);
    for (h, r) in hypotheses.iter().zip(references) {
        let h: Vec<char> = h.chars().filter(|c| !c.is_whitespace()).collect();
        let r: Vec<char> = r.chars().filter(|c| !c.is_whitespace()).collect();
        for n in 1..=ORDER {
            let (hn, rn) = (ngrams(&h, n), ngrams(&r, n));
            hyp_total[n - 1] += hn.values().sum::<usize>();
            ref_total[n - 1] += rn.values().sum::<usize>();
            matched[n - 1] += hn.iter().map(|(g, c)| (*c).min(rn.get(g).copied().unwrap_or(0))).sum::<usize>();
        }
    }
    let (mut p, mut r) = (0.0, 0.0);
    for n in 0..ORDER {
        p += if hyp_total[n] > 0 { matched[n] as f64 / hyp_total[n] as f64 } else { 0.0 };
        r += if ref_total[n] > 0 { matched[n] as f64 / ref_total[n] as f64 } else { 0.0 };
    }
    let (p, r) = (p / ORDER as f64, r / ORDER as f64);
    if p + r == 0.0 {
        return 0.0;
    }
    100.0 * (1.0 + BETA * BETA) * p * r / (BETA * BETA * p + r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_text_scores_100_and_disjoint_text_0() {
        let a = vec!["Ndipo Mulungu anati".to_string()];
        assert!((chrf(&a, &a) - 100.0).abs() < 1e-9);
        assert_eq!(chrf(&["xyz".to_string()], &["abc".to_string()]), 0.0);
    }

    #[test]
    fn a_partial_match_scores_by_hand() {
        // hyp "ab", ref "abc": unigrams 2/2 matched (p 1, r 2/3), bigrams 1/1 (p 1, r 1/2),
        // trigram: hyp has none (p 0), ref 1 (r 0); orders 4-6 count 0 on both sides.
        let (p, r) = ((1.0 + 1.0) / 6.0, (2.0 / 3.0 + 0.5) / 6.0);
        let want = 100.0 * 5.0 * p * r / (4.0 * p + r);
        let got = chrf(&["a b".to_string()], &["abc".to_string()]);
        assert!((got - want).abs() < 1e-9, "{got} vs {want}");
    }
}
