//! `ai.neft:NeuronStats`, neft's one custom operator: every per-neuron statistic of a
//! `[rows, neurons]` activation in a single pass, for profiling on the CPU.
//!
//! In: `x` FLOAT (the last axis is the neurons, every other axis counts as rows), an
//! optional FLOAT `mask` with one value per row (rows where it is 0 are skipped), an
//! optional FLOAT `after` that is not read, and the INTS attribute `stats`: the
//! statistics wanted, as indices into Σx, Σ|x|, Σx², #(x>0), max|x|, ascending. Out:
//! FLOAT `[k, neurons]`, one row per wanted statistic. max|x| is 0 where no row counts.
//!
//! `after` orders the nodes: the instrumented graph feeds each node the previous site's
//! statistics, so the nodes form one chain in forward order (why: see
//! `profile::reduce::Reducer::finish`).
//!
//! Why: in standard ops each statistic is its own memory-bound pass over the activation
//! (and `Abs`, `Mul`, `Greater`, `Cast` each write a full copy first), which made a
//! five-statistic profile cost 1.6x a forward pass. Here the activation is read once,
//! padded rows are not read at all, and the work is split over ONNX Runtime's own
//! thread pool. The kernel runs on the host, so a CUDA session keeps the standard ops
//! (see `profile::reduce`); the instrumented graph that uses it never leaves neft.

use ort::operator::{ComputeContext, Kernel, KernelContext, Operator, OperatorDomain, OperatorInput, OperatorOutput};
use ort::value::TensorElementType;
use std::sync::Mutex;

pub const DOMAIN: &str = "ai.neft";
pub const OP: &str = "NeuronStats";
pub const DOMAIN_VERSION: i64 = 1;
/// How many statistics the operator knows (the `stats` indices are below this).
pub const STATISTICS: usize = 5;

/// Rows one task of the thread pool reduces (fewer rows are not worth a task).
const ROWS_PER_TASK: usize = 256;
/// At most this many partial results per call (each is `[k, neurons]`).
const MAX_TASKS: usize = 16;

/// The domain to register with every session.
pub fn domain() -> ort::Result<OperatorDomain> {
    OperatorDomain::new(DOMAIN)?.add(NeuronStats)
}

/// Which statistics to compute, in the operator's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted([bool; STATISTICS]);

impl Wanted {
    /// From the `stats` attribute; an error says what is wrong with it.
    pub fn from_indices(stats: &[i64]) -> Result<Wanted, String> {
        let mut w = [false; STATISTICS];
        for (i, &s) in stats.iter().enumerate() {
            let ok = (0..STATISTICS as i64).contains(&s) && (i == 0 || s > stats[i - 1]);
            if !ok {
                return Err(format!(
                    "attribute 'stats' {stats:?}: must be ascending indices below {STATISTICS} (Σx, Σ|x|, Σx², #(x>0), \
                     max|x|)"
                ));
            }
            w[s as usize] = true;
        }
        if stats.is_empty() {
            return Err("attribute 'stats' is empty: name at least one statistic".into());
        }
        Ok(Wanted(w))
    }

    pub fn count(self) -> usize {
        self.0.iter().filter(|&&b| b).count()
    }
}

/// `[k, n]` statistics of the rows of `x` (`[rows, n]`, row-major) whose `mask` is not 0
/// (every row without a mask); `parallel(tasks, f)` runs `f(0..tasks)`, possibly on
/// several threads.
pub fn neuron_stats(
    x: &[f32],
    n: usize,
    mask: Option<&[f32]>,
    wanted: Wanted,
    parallel: impl FnOnce(usize, &(dyn Fn(usize) + Sync)),
) -> Vec<f32> {
    if n == 0 {
        return vec![];
    }
    let rows = x.len() / n;
    let tasks = rows.div_ceil(ROWS_PER_TASK).clamp(1, MAX_TASKS);
    let per_task = rows.div_ceil(tasks);
    let parts: Vec<Mutex<Vec<f32>>> = (0..tasks).map(|_| Mutex::new(vec![])).collect();
    parallel(tasks, &|t| {
        let (start, end) = ((t * per_task).min(rows), ((t + 1) * per_task).min(rows));
        let mut all = vec![0.0f32; STATISTICS * n];
        accumulate(&x[start * n..end * n], n, mask.map(|m| &m[start..end]), &mut all);
        *parts[t].lock().expect("no task panics holding it") = all;
    });
    let mut parts = parts.into_iter().map(|p| p.into_inner().expect("no task panics holding it"));
    let mut all = parts.next().expect("at least one task");
    for part in parts {
        combine(&mut all, &part, n);
    }
    let wanted_rows = all.chunks_exact(n).zip(wanted.0).filter(|(_, w)| *w);
    wanted_rows.flat_map(|(row, _)| row.iter().copied()).collect()
}

/// Adds all five statistics of the counted rows of `x` into `all` (`[5, n]`), on the
/// widest vector unit the processor has. (Computing the unwanted ones too costs little:
/// the time goes in reading `x`.)
fn accumulate(x: &[f32], n: usize, mask: Option<&[f32]>, all: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the processor has AVX2 (checked just above).
        unsafe { accumulate_avx2(x, n, mask, all) };
        return;
    }
    accumulate_all(x, n, mask, all);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn accumulate_avx2(x: &[f32], n: usize, mask: Option<&[f32]>, all: &mut [f32]) {
    accumulate_all(x, n, mask, all)
}

/// Counted rows go in groups of [`GROUP`]; for each group, each run of [`LANES`]
/// neurons loads its five sums into registers, adds the group's values and stores
/// them back. The sums then move once per group instead of once per row, and the
/// fixed-size loops vectorize.
const GROUP: usize = 8;
const LANES: usize = 8;

/// All five statistics of the counted rows, added into `all` (`[5, n]`).
#[inline(always)]
fn accumulate_all(x: &[f32], n: usize, mask: Option<&[f32]>, all: &mut [f32]) {
    let rows = x.len() / n;
    let counted = (0..rows).filter(|&r| mask.is_none_or(|m| m[r] != 0.0));
    let mut group = [0usize; GROUP];
    let mut len = 0;
    for r in counted.chain(std::iter::once(usize::MAX)) {
        if r != usize::MAX {
            group[len] = r;
            len += 1;
        }
        if len == GROUP || (r == usize::MAX && len > 0) {
            add_group(x, n, &group[..len], all);
            len = 0;
        }
    }
}

#[inline(always)]
fn add_group(x: &[f32], n: usize, group: &[usize], all: &mut [f32]) {
    let (sum, rest) = all.split_at_mut(n);
    let (abs, rest) = rest.split_at_mut(n);
    let (sq, rest) = rest.split_at_mut(n);
    let (pos, max) = rest.split_at_mut(n);
    let full = n - n % LANES;
    for c in (0..full).step_by(LANES) {
        let mut s: [f32; LANES] = sum[c..c + LANES].try_into().expect("a run");
        let mut a: [f32; LANES] = abs[c..c + LANES].try_into().expect("a run");
        let mut q: [f32; LANES] = sq[c..c + LANES].try_into().expect("a run");
        let mut p: [f32; LANES] = pos[c..c + LANES].try_into().expect("a run");
        let mut m: [f32; LANES] = max[c..c + LANES].try_into().expect("a run");
        for &r in group {
            let v: &[f32; LANES] = x[r * n + c..r * n + c + LANES].try_into().expect("a run");
            for i in 0..LANES {
                let (v, va) = (v[i], v[i].abs());
                s[i] += v;
                a[i] += va;
                q[i] += v * v;
                p[i] += if v > 0.0 { 1.0 } else { 0.0 };
                m[i] = if va > m[i] { va } else { m[i] };
            }
        }
        sum[c..c + LANES].copy_from_slice(&s);
        abs[c..c + LANES].copy_from_slice(&a);
        sq[c..c + LANES].copy_from_slice(&q);
        pos[c..c + LANES].copy_from_slice(&p);
        max[c..c + LANES].copy_from_slice(&m);
    }
    for c in full..n {
        for &r in group {
            let v = x[r * n + c];
            sum[c] += v;
            abs[c] += v.abs();
            sq[c] += v * v;
            pos[c] += if v > 0.0 { 1.0 } else { 0.0 };
            max[c] = max[c].max(v.abs());
        }
    }
}

/// Merges a partial `[5, n]` result into `out`: sums add, maxima take the larger.
fn combine(out: &mut [f32], part: &[f32], n: usize) {
    for (stat, (o, p)) in out.chunks_exact_mut(n).zip(part.chunks_exact(n)).enumerate() {
        if stat == 4 {
            o.iter_mut().zip(p).for_each(|(o, &p)| *o = o.max(p));
        } else {
            o.iter_mut().zip(p).for_each(|(o, &p)| *o += p);
        }
    }
}

struct NeuronStats;

impl Operator for NeuronStats {
    type Kernel<'attr> = NeuronStatsKernel;

    fn name(&self) -> &str {
        OP
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [
            OperatorInput::required(TensorElementType::Float32),
            OperatorInput::optional(TensorElementType::Float32),
            OperatorInput::optional(TensorElementType::Float32),
        ]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, info: &KernelContext<'attr>) -> ort::Result<NeuronStatsKernel> {
        let node = info.node_name().unwrap_or_default();
        let stats: Vec<i64> = info
            .get("stats")
            .ok_or_else(|| ort::Error::new(format!("{OP} node '{node}': attribute 'stats' (INTS) is missing")))?;
        let wanted = Wanted::from_indices(&stats).map_err(|e| ort::Error::new(format!("{OP} node '{node}': {e}")))?;
        Ok(NeuronStatsKernel { wanted, node })
    }
}

struct NeuronStatsKernel {
    wanted: Wanted,
    node: String,
}

impl Kernel for NeuronStatsKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let err = |why: String| ort::Error::new(format!("{OP} node '{}': {why}", self.node));
        let x = ctx.input(0)?.ok_or_else(|| err("input 'x' is missing".into()))?;
        let (shape, x) = x.try_extract_tensor::<f32>()?;
        let n = shape.last().copied().unwrap_or(1).max(0) as usize;
        let rows = x.len().checked_div(n).unwrap_or(0);
        let mask = ctx.input(1)?;
        let mask = match &mask {
            Some(m) => {
                let (_, m) = m.try_extract_tensor::<f32>()?;
                if m.len() != rows {
                    return Err(err(format!("the mask has {} values for {rows} rows", m.len())));
                }
                Some(m)
            }
            None => None,
        };
        let stats = neuron_stats(x, n, mask, self.wanted, |tasks, f| {
            // Each task writes only its own slot, so running them all again here (if
            // the pool refused the work) gives the same result.
            if tasks == 1 || ctx.par_for(tasks, 0, f).is_err() {
                (0..tasks).for_each(f);
            }
        });
        let mut out = ctx
            .output(0, vec![self.wanted.count() as i64, n as i64])?
            .ok_or_else(|| err("output 'stats' is missing".into()))?;
        let (_, dst) = out.try_extract_tensor_mut::<f32>()?;
        dst.copy_from_slice(&stats);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serial(tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        (0..tasks).for_each(f);
    }

    /// The statistics computed the plain way, one neuron at a time.
    fn direct(x: &[f32], n: usize, mask: Option<&[f32]>) -> Vec<f32> {
        let rows: Vec<&[f32]> =
            x.chunks(n).enumerate().filter(|(r, _)| mask.is_none_or(|m| m[*r] != 0.0)).map(|(_, r)| r).collect();
        let mut out = vec![];
        for stat in 0..STATISTICS {
            for j in 0..n {
                let col = rows.iter().map(|r| r[j]);
                out.push(match stat {
                    0 => col.sum(),
                    1 => col.map(f32::abs).sum(),
                    2 => col.map(|v| v * v).sum(),
                    3 => col.filter(|&v| v > 0.0).count() as f32,
                    _ => col.map(f32::abs).fold(0.0, f32::max),
                });
            }
        }
        out
    }

    fn data(rows: usize, n: usize) -> Vec<f32> {
        (0..rows * n).map(|i| ((i * 7919 % 1009) as f32 - 504.0) / 97.0).collect()
    }

    #[test]
    fn one_pass_equals_each_statistic_computed_alone_and_skips_masked_rows() {
        let (rows, n) = (1000, 13);
        let x = data(rows, n);
        let mask: Vec<f32> = (0..rows).map(|r| if r % 3 == 0 { 0.0 } else { 1.0 }).collect();
        let all = Wanted::from_indices(&[0, 1, 2, 3, 4]).unwrap();
        for m in [None, Some(mask.as_slice())] {
            let got = neuron_stats(&x, n, m, all, serial);
            let want = direct(&x, n, m);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-4 * w.abs().max(1.0), "stat {} neuron {}: {g} vs {w}", i / n, i % n);
            }
        }
    }

    #[test]
    fn only_the_wanted_rows_come_back_in_order() {
        let (rows, n) = (300, 4);
        let x = data(rows, n);
        let all = neuron_stats(&x, n, None, Wanted::from_indices(&[0, 1, 2, 3, 4]).unwrap(), serial);
        let some = neuron_stats(&x, n, None, Wanted::from_indices(&[1, 4]).unwrap(), serial);
        assert_eq!(some, [&all[n..2 * n], &all[4 * n..]].concat());
    }

    #[test]
    fn no_counted_rows_give_zeros_and_bad_attributes_are_refused() {
        let x = data(10, 3);
        let zeros = neuron_stats(&x, 3, Some(&[0.0; 10]), Wanted::from_indices(&[0, 4]).unwrap(), serial);
        assert_eq!(zeros, vec![0.0; 6]);
        for bad in [&[][..], &[5], &[2, 1], &[1, 1], &[-1]] {
            assert!(Wanted::from_indices(bad).is_err(), "{bad:?}");
        }
    }
}
