//! Precision and recall of the safety rules on a labelled corpus (tests/data/safety_corpus.tsv:
//! positives of every detector kind in varied formats, and hard negatives such as order
//! numbers, dates, version strings, ISBNs and phone-like serials).

use std::collections::BTreeMap;

use edgellm_text::safety::{SafetyConfig, SafetyRules};

#[test]
fn safety_rules_reach_097_precision_and_recall_on_the_corpus() {
    let corpus = include_str!("data/safety_corpus.tsv");
    let rules = SafetyRules::new(&SafetyConfig::default()).unwrap();
    // Per kind: (true positives, false positives, false negatives).
    let mut per_kind: BTreeMap<String, (u32, u32, u32)> = BTreeMap::new();
    let mut lines = 0;
    let mut misses = Vec::new();
    for line in corpus.lines().filter(|l| !l.starts_with('#')) {
        let (label, text) = line.split_once('\t').expect("label<TAB>text");
        lines += 1;
        let found: Vec<String> = rules.scan(text).detections.iter().map(|d| d.kind.name().to_string()).collect();
        if label != "none" {
            let entry = per_kind.entry(label.to_string()).or_default();
            if found.iter().any(|k| k == label) {
                entry.0 += 1;
            } else {
                entry.2 += 1;
                misses.push(format!("missed {label}: {text}"));
            }
        }
        for kind in found.iter().filter(|k| *k != label) {
            per_kind.entry(kind.clone()).or_default().1 += 1;
            misses.push(format!("false {kind}: {text}"));
        }
    }
    assert!(lines >= 300, "the corpus has {lines} lines");
    let (tp, fp, fn_) = per_kind.values().fold((0, 0, 0), |a, v| (a.0 + v.0, a.1 + v.1, a.2 + v.2));
    println!("{:<12} {:>5} {:>5} {:>5} {:>9} {:>7}", "kind", "tp", "fp", "fn", "precision", "recall");
    for (kind, (t, f, n)) in &per_kind {
        let p = *t as f64 / (t + f).max(1) as f64;
        let r = *t as f64 / (t + n).max(1) as f64;
        println!("{kind:<12} {t:>5} {f:>5} {n:>5} {p:>9.3} {r:>7.3}");
    }
    let precision = tp as f64 / (tp + fp) as f64;
    let recall = tp as f64 / (tp + fn_) as f64;
    println!("{:<12} {tp:>5} {fp:>5} {fn_:>5} {precision:>9.3} {recall:>7.3}  ({lines} lines)", "all");
    for m in &misses {
        println!("  {m}");
    }
    assert!(precision >= 0.97, "precision {precision:.3}");
    assert!(recall >= 0.97, "recall {recall:.3}");
}
