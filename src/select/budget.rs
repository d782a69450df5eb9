//! How many units to take, and which: the budget (`6%` of the targeted parameters or a
//! count of units), the scope (one ranking over all groups, or a share per group) and
//! the allocation.
//!
//! In: groups, one score per unit (higher = selected first). Out: the selected rows of
//! every group. Guarantees: the selected parameters never exceed the budget, and what
//! is left of it is smaller than the cost of any unit not taken; ties are broken by
//! group order, then row.

use super::units::Group;
use anyhow::bail;

/// `--budget`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    /// A percentage of the targeted parameters.
    Percent(f64),
    /// A number of units (neurons, or MLP units with `--unit mlp-unit`).
    Count(u64),
}

impl std::str::FromStr for Budget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = || {
            format!("--budget '{s}': give a percentage of the targeted parameters (6%) or a number of neurons (120)")
        };
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(format!("--budget {s}: a percentage must be more than 0% and at most 100%"));
            }
            return Ok(Budget::Percent(p));
        }
        match s.parse::<u64>() {
            Ok(0) => Err("--budget 0: nothing would be selected; give a positive number or percentage".into()),
            Ok(n) => Ok(Budget::Count(n)),
            Err(_) => Err(bad()),
        }
    }
}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Budget::Percent(p) => write!(f, "{p}%"),
            Budget::Count(n) => write!(f, "{n} units"),
        }
    }
}

/// `--scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One threshold over all groups (the paper's).
    Global,
    /// Every group gets its share of the budget.
    PerLayer,
    /// One threshold over scores divided by their group's mean magnitude: a unit
    /// counts by how far it stands out in its own layer, so layers whose scores are
    /// larger overall (deeper blocks, for activations) do not take the budget by scale.
    Normalized,
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "global" => Ok(Scope::Global),
            "per-layer" => Ok(Scope::PerLayer),
            "normalized" => Ok(Scope::Normalized),
            _ => Err(format!("unknown scope '{s}': use global, per-layer or normalized")),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            Scope::Global => "global",
            Scope::PerLayer => "per-layer",
            Scope::Normalized => "normalized",
        })
    }
}

/// The budget in parameters, or in units for `Budget::Count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub amount: u64,
    pub in_units: bool,
}

impl Limit {
    pub fn of(budget: Budget, groups: &[Group]) -> anyhow::Result<Limit> {
        let units: u64 = groups.iter().map(|g| g.units as u64).sum();
        let params: u64 = groups.iter().map(Group::params).sum();
        match budget {
            Budget::Count(n) if n > units => {
                bail!("--budget {n}: the targeted layers have only {units} units to select from")
            }
            Budget::Count(n) => Ok(Limit { amount: n, in_units: true }),
            Budget::Percent(p) => {
                let amount = (p / 100.0 * params as f64).floor() as u64;
                let smallest = groups.iter().map(Group::unit_params).min().unwrap_or(0);
                if amount < smallest {
                    bail!(
                        "--budget {p}%: {amount} of the {params} targeted parameters is less than one unit \
                         ({smallest} parameters); raise the budget"
                    );
                }
                Ok(Limit { amount, in_units: false })
            }
        }
    }

    fn cost(&self, g: &Group) -> u64 {
        if self.in_units {
            1
        } else {
            g.unit_params()
        }
    }
}

/// One candidate unit.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    score: f64,
    group: usize,
    row: usize,
}

/// Best first: higher score, then lower group, then lower row. NaN ranks last.
fn ranked(scores: &[Vec<f64>], groups: impl Fn(usize) -> bool) -> Vec<Candidate> {
    let mut all: Vec<Candidate> = scores
        .iter()
        .enumerate()
        .filter(|(g, _)| groups(*g))
        .flat_map(|(group, s)| {
            s.iter().enumerate().map(move |(row, &v)| Candidate {
                // +0.0 makes -0.0 equal to 0.0 under total_cmp.
                score: if v.is_nan() { f64::NEG_INFINITY } else { v + 0.0 },
                group,
                row,
            })
        })
        .collect();
    all.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.group.cmp(&b.group)).then(a.row.cmp(&b.row)));
    all
}

/// The selected rows of every group (sorted).
pub fn allocate(groups: &[Group], scores: &[Vec<f64>], limit: Limit, scope: Scope) -> Vec<Vec<usize>> {
    let mut picked: Vec<Vec<usize>> = vec![vec![]; groups.len()];
    let mut left = limit.amount;
    if scope == Scope::PerLayer {
        left = per_group_quotas(groups, scores, limit, &mut picked);
    }
    // Global ranking (or the per-layer top-up): take every unit that still fits.
    let taken: Vec<std::collections::HashSet<usize>> =
        picked.iter().map(|rows| rows.iter().copied().collect()).collect();
    let order = match scope {
        Scope::Global => ranked(scores, |_| true),
        Scope::PerLayer => top_up_order(groups, scores, limit, &taken),
        Scope::Normalized => ranked(&normalized(scores), |_| true),
    };
    for c in order {
        let cost = limit.cost(&groups[c.group]);
        if cost <= left && !taken[c.group].contains(&c.row) {
            picked[c.group].push(c.row);
            left -= cost;
        }
    }
    for rows in &mut picked {
        rows.sort_unstable();
    }
    picked
}

/// Each group's scores over the mean magnitude of its finite scores (unchanged where
/// that mean is zero).
fn normalized(scores: &[Vec<f64>]) -> Vec<Vec<f64>> {
    scores
        .iter()
        .map(|s| {
            let finite: Vec<f64> = s.iter().filter(|v| v.is_finite()).map(|v| v.abs()).collect();
            let mean = finite.iter().sum::<f64>() / finite.len().max(1) as f64;
            let scale = if mean > 0.0 { mean } else { 1.0 };
            s.iter().map(|v| v / scale).collect()
        })
        .collect()
}

/// Per group the whole units of its share (`share × units`, floored), best first;
/// returns the budget left.
fn per_group_quotas(groups: &[Group], scores: &[Vec<f64>], limit: Limit, picked: &mut [Vec<usize>]) -> u64 {
    let mut left = limit.amount;
    for (g, group) in groups.iter().enumerate() {
        let k = share(groups, limit, g).floor() as usize;
        let best = ranked(scores, |i| i == g);
        for c in best.into_iter().take(k.min(group.units)) {
            picked[g].push(c.row);
            left -= limit.cost(group);
        }
    }
    left
}

/// The fraction of the budget that falls to group `g`, in its units.
fn share(groups: &[Group], limit: Limit, g: usize) -> f64 {
    if limit.in_units {
        let total: u64 = groups.iter().map(|x| x.units as u64).sum();
        limit.amount as f64 * groups[g].units as f64 / total.max(1) as f64
    } else {
        let total: u64 = groups.iter().map(Group::params).sum();
        limit.amount as f64 * groups[g].params() as f64 / total.max(1) as f64 / groups[g].unit_params().max(1) as f64
    }
}

/// The per-layer top-up: groups with the largest fractional share first, each
/// offering its next best unit in turn.
fn top_up_order(
    groups: &[Group],
    scores: &[Vec<f64>],
    limit: Limit,
    taken: &[std::collections::HashSet<usize>],
) -> Vec<Candidate> {
    let mut by_remainder: Vec<usize> = (0..groups.len()).collect();
    let frac = |g: usize| share(groups, limit, g).fract();
    by_remainder.sort_by(|&a, &b| frac(b).total_cmp(&frac(a)).then(a.cmp(&b)));
    let mut queues: Vec<std::vec::IntoIter<Candidate>> = by_remainder
        .iter()
        .map(|&g| {
            ranked(scores, |i| i == g)
                .into_iter()
                .filter(|c| !taken[g].contains(&c.row))
                .collect::<Vec<_>>()
                .into_iter()
        })
        .collect();
    let mut order = vec![];
    loop {
        let round: Vec<Candidate> = queues.iter_mut().filter_map(|q| q.next()).collect();
        if round.is_empty() {
            return order;
        }
        order.extend(round);
    }
}
