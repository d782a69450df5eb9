//! Profiling cost: tokens per second of the instrumented model against a plain forward
//! pass of the same model on the same batches (ONNX Runtime CPU), and the peak memory
//! of `neft::profile::profile` on 1x and 10x the calibration data.
//!
//! ```text
//! cargo run --release --example bench_profile -- [--layers 4] [--hidden 512] [--ffn 1408] [--kv-heads N]
//!     [--vocab 8192] [--batch 8] [--seq 256] [--examples 64] [--rounds 5] [--only throughput|memory]
//!     [--threads N] [--clock wall|cpu]
//! ```
//! The model is a random-weight Llama built by `neft::models::llama`, the data random
//! token ids of 64 to `--seq` tokens, so batches carry padding. Throughput: all sessions
//! run the same batches, interleaved batch by batch, for `--rounds` rounds; each round
//! gives each run a ratio to the forward pass, and the table shows their median and
//! range (the machine is shared). `--threads 1 --clock cpu` times by the thread's CPU
//! time, which other processes' load does not change. Every profile runs in both forms
//! of the reductions: neft's fused operator (the CPU's) and standard ops (CUDA's).
//! Memory: each data size and form is profiled in its own child process, which reports
//! its peak resident memory (VmHWM).

use neft::models::llama::{build_llama, LlamaConfig, RandomWeights};
use neft::profile::{
    profile, Form, ProfileOptions, Profiler, Statistic, StreamOptions, TokenBatch, TokenInputs, TokenStream,
};
use neft::runtime::ort::{HostTensor, Session, SessionOptions};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

struct Args {
    layers: usize,
    /// Key/value heads (default: one per 128 of hidden).
    kv: Option<usize>,
    hidden: usize,
    ffn: usize,
    vocab: usize,
    batch: usize,
    seq: usize,
    examples: usize,
    rounds: usize,
    /// `throughput`, `memory` or both (empty).
    only: String,
    /// Intra-op threads (ONNX Runtime's choice when absent).
    threads: Option<usize>,
    /// Time by this thread's CPU time instead of the wall clock (needs `--threads 1`,
    /// where ONNX Runtime runs every kernel on the calling thread): other processes'
    /// load then cannot change the numbers.
    cpu_clock: bool,
}

fn parse(argv: &[String]) -> Args {
    let mut a = Args {
        layers: 4,
        kv: None,
        hidden: 512,
        ffn: 1408,
        vocab: 8192,
        batch: 8,
        seq: 256,
        examples: 64,
        rounds: 5,
        only: String::new(),
        threads: None,
        cpu_clock: false,
    };
    for pair in argv.chunks(2) {
        let n = || {
            pair.get(1).and_then(|v| v.parse::<usize>().ok()).unwrap_or_else(|| panic!("{} needs a number", pair[0]))
        };
        match pair[0].as_str() {
            "--layers" => a.layers = n(),
            "--kv-heads" => a.kv = Some(n()),
            "--hidden" => a.hidden = n(),
            "--ffn" => a.ffn = n(),
            "--vocab" => a.vocab = n(),
            "--batch" => a.batch = n(),
            "--seq" => a.seq = n(),
            "--examples" => a.examples = n(),
            "--rounds" => a.rounds = n(),
            "--only" => a.only = pair.get(1).cloned().unwrap_or_default(),
            "--threads" => a.threads = Some(n()),
            "--clock" => a.cpu_clock = pair.get(1).map(String::as_str) == Some("cpu"),
            other => panic!("unknown option {other}"),
        }
    }
    a
}

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("--child") {
        let form = if argv[1] == "standard" { Form::Standard } else { Form::Fused };
        return child(form, Path::new(&argv[2]), Path::new(&argv[3]));
    }
    let a = parse(&argv);
    anyhow::ensure!(!a.cpu_clock || a.threads == Some(1), "--clock cpu needs --threads 1");
    let dir = tempfile_dir()?;
    let model_path = build(&dir.join("model"), &a, a.hidden, a.ffn, a.layers, a.kv.unwrap_or((a.hidden / 128).max(1)))?;
    let data = dir.join("calib.jsonl");
    write_tokens(&data, a.examples, a.seq, a.vocab, 1)?;
    if a.only != "memory" {
        throughput(&model_path, &data, &a)?;
    }
    if a.only != "throughput" {
        // A smaller model, so the data's share would show if it grew.
        let small = build(&dir.join("small"), &a, 128, 344, 2, 1)?;
        memory(&small, &dir, &a)?;
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("neft-bench-profile-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn build(dir: &Path, a: &Args, hidden: usize, ffn: usize, layers: usize, kv: usize) -> anyhow::Result<PathBuf> {
    let cfg: LlamaConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": a.vocab, "hidden_size": hidden, "intermediate_size": ffn, "num_hidden_layers": layers,
        "num_attention_heads": hidden / 64,
        "num_key_value_heads": kv,
    }))?;
    build_llama(&cfg, &mut RandomWeights::new(1), dir)
}

/// `n` examples of 64 to `seq` random token ids.
fn write_tokens(path: &Path, n: usize, seq: usize, vocab: usize, seed: u64) -> anyhow::Result<()> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut text = String::new();
    for _ in 0..n {
        let len = 64.min(seq) + (next() as usize) % (seq - 64.min(seq) + 1);
        let ids: Vec<u64> = (0..len).map(|_| next() % vocab as u64).collect();
        text.push_str(&serde_json::json!({ "input_ids": ids }).to_string());
        text.push('\n');
    }
    std::fs::write(path, text)?;
    Ok(())
}

fn batches(model: &neft::onnx::Model, data: &Path, a: &Args) -> anyhow::Result<(TokenInputs, Vec<TokenBatch>)> {
    let graph = neft::ir::Graph::from_proto(model.graph())?;
    let inputs = TokenInputs::of(&graph, "model")?;
    let opts = StreamOptions { batch: a.batch, seq_len: a.seq, max_examples: None };
    let all = TokenStream::open(data, None, inputs.clone(), opts)?.collect::<anyhow::Result<Vec<_>>>()?;
    Ok((inputs, all))
}

/// A plain forward pass whose outputs stay in ONNX Runtime (nothing copied out).
fn forward(session: &mut Session, feeds: &[(&str, HostTensor)]) -> anyhow::Result<()> {
    let mut values: Vec<(std::borrow::Cow<str>, ort::session::SessionInputValue)> = vec![];
    for (name, t) in feeds {
        let HostTensor::I64(a) = t else { anyhow::bail!("token inputs are INT64") };
        let v = ort::value::Tensor::from_array(a.clone())?.into_dyn();
        values.push(((*name).into(), v.into()));
    }
    drop(session.inner.run(values)?);
    Ok(())
}

fn throughput(model_path: &Path, data: &Path, a: &Args) -> anyhow::Result<()> {
    let model = neft::onnx::load(model_path)?;
    let (inputs, all) = batches(&model, data, a)?;
    let tokens: usize = all.iter().map(|b| b.tokens).sum();
    let padded: usize = all.iter().map(|b| b.input_ids.shape().iter().product::<usize>()).sum();
    let opts = SessionOptions { threads: a.threads, ..Default::default() };
    let (targets, unit) = ("mlp".parse().unwrap(), neft::compile::Unit::Neuron);
    // `neft profile --targets mlp`: both sites of every MLP layer; compile: the sites
    // its selection reads.
    let mlp: BTreeSet<String> = neft::select::targeted_weights(&model, &targets, unit)?
        .into_iter()
        .flat_map(|w| [neft::profile::input_site(&w), w])
        .collect();
    let read = neft::select::activation_sites(&model, &targets, unit)?;
    let mut plain = Session::from_file(model_path, &opts)?;
    let all_stats = Statistic::ALL;
    // The CPU form (neft's fused operator) beside the standard-op form the CUDA provider gets.
    let (fused, standard) = (Some(Form::Fused), Some(Form::Standard));
    let mut every = Profiler::new(&model, &opts, None, &all_stats, fused)?;
    let mut every_std = Profiler::new(&model, &opts, None, &all_stats, standard)?;
    let mut mlp_only = Profiler::new(&model, &opts, Some(&mlp), &all_stats, fused)?;
    let mut mlp_only_std = Profiler::new(&model, &opts, Some(&mlp), &all_stats, standard)?;
    let mut mlp_one = Profiler::new(&model, &opts, Some(&read), &[Statistic::MeanAbs], fused)?;
    let mut mlp_one_std = Profiler::new(&model, &opts, Some(&read), &[Statistic::MeanAbs], standard)?;
    let sites = (every.sites.len(), mlp_only.sites.len(), mlp_one.sites.len());
    type Run<'a> = Box<dyn FnMut(&TokenBatch) -> anyhow::Result<()> + 'a>;
    let mut runs: Vec<(&str, Run)> = vec![
        ("plain forward (ORT CPU)", Box::new(|b: &TokenBatch| forward(&mut plain, &b.feeds(&inputs)?))),
        ("profile: every layer, 5 statistics", Box::new(|b: &TokenBatch| every.run(b).map(drop))),
        ("  same, standard ops", Box::new(|b: &TokenBatch| every_std.run(b).map(drop))),
        ("profile: MLP layers, 5 statistics", Box::new(|b: &TokenBatch| mlp_only.run(b).map(drop))),
        ("  same, standard ops", Box::new(|b: &TokenBatch| mlp_only_std.run(b).map(drop))),
        ("profile: MLP sites compile reads, mean abs", Box::new(|b: &TokenBatch| mlp_one.run(b).map(drop))),
        ("  same, standard ops", Box::new(|b: &TokenBatch| mlp_one_std.run(b).map(drop))),
    ];
    for (_, run) in runs.iter_mut() {
        run(&all[0])?;
    }
    // Per batch, every run in turn (starting one further each batch), so a burst of load
    // from other processes falls on all of them; a ratio is taken within one round.
    let mut secs = vec![vec![0.0f64; a.rounds]; runs.len()];
    for round in 0..a.rounds {
        for (i, b) in all.iter().enumerate() {
            for k in 0..runs.len() {
                let k = (k + i + round) % runs.len();
                let t0 = now(a.cpu_clock);
                (runs[k].1)(b)?;
                secs[k][round] += now(a.cpu_clock) - t0;
            }
        }
    }
    let params: u64 = model.graph().initializer.iter().map(|t| neft::onnx::element_count(&t.dims)).sum();
    println!(
        "model: Llama, {} layers, hidden {}, ffn {}, vocab {} ({:.1}M parameters); {} batches of {} (seq <= {}), \
         {tokens} real tokens in {padded} positions; sites: {} (every layer), {} (MLP), {} (compile); {} rounds, threads {}, {} clock",
        a.layers,
        a.hidden,
        a.ffn,
        a.vocab,
        params as f64 / 1e6,
        all.len(),
        a.batch,
        a.seq,
        sites.0,
        sites.1,
        sites.2,
        a.rounds,
        a.threads.map_or("ORT default".to_string(), |t| t.to_string()),
        if a.cpu_clock { "thread CPU" } else { "wall" }
    );
    let clock = if a.cpu_clock { "CPU s" } else { "s" };
    println!("| run | median {clock} per round | real tokens/s | vs forward: median | min–max |");
    println!("|---|---:|---:|---:|---:|");
    for (k, (name, _)) in runs.iter().enumerate() {
        let ratios: Vec<f64> = (0..a.rounds).map(|r| secs[0][r] / secs[k][r]).collect();
        let (t, (r, lo, hi)) = (median(&secs[k]), spread(&ratios));
        println!("| {name} | {t:.3} | {:.0} | {r:.2}x | {lo:.2}–{hi:.2}x |", tokens as f64 / t);
    }
    Ok(())
}

/// Seconds on the wall clock, or of this thread's CPU time.
fn now(cpu: bool) -> f64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    if !cpu {
        return START.get_or_init(Instant::now).elapsed().as_secs_f64();
    }
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, t: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut t = Timespec { sec: 0, nsec: 0 };
    // SAFETY: `t` is a valid, writable timespec (64-bit Linux layout).
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    t.sec as f64 + t.nsec as f64 * 1e-9
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Median, smallest and largest.
fn spread(v: &[f64]) -> (f64, f64, f64) {
    let lo = v.iter().copied().fold(f64::MAX, f64::min);
    let hi = v.iter().copied().fold(f64::MIN, f64::max);
    (median(v), lo, hi)
}

fn memory(model: &Path, dir: &Path, a: &Args) -> anyhow::Result<()> {
    println!();
    println!("| reductions | calibration data | examples | file | tokens | seconds | peak RSS (VmHWM) |");
    println!("|---|---|---|---|---|---|---|");
    for (k, scale) in [1usize, 10].iter().enumerate() {
        let data = dir.join(format!("mem{scale}.jsonl"));
        let n = a.examples * 4 * scale;
        write_tokens(&data, n, a.seq, a.vocab, 7 + k as u64)?;
        for form in ["fused", "standard"] {
            let out = std::process::Command::new(std::env::current_exe()?)
                .args(["--child", form])
                .arg(model)
                .arg(&data)
                .output()?;
            anyhow::ensure!(out.status.success(), "child failed: {}", String::from_utf8_lossy(&out.stderr));
            let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let size = std::fs::metadata(&data)?.len();
            println!("| {form} | {scale}x | {n} | {:.1} MB | {line} |", size as f64 / 1e6);
        }
    }
    Ok(())
}

/// Profiles `model` on `data` with the reductions in `form` and prints "tokens | seconds | VmHWM".
fn child(form: Form, model: &Path, data: &Path) -> anyhow::Result<()> {
    let m = neft::onnx::load(model)?;
    let opts = ProfileOptions {
        stream: StreamOptions { batch: 8, seq_len: 256, max_examples: None },
        session: SessionOptions {
            threads: std::env::var("BENCH_THREADS").ok().and_then(|t| t.parse().ok()),
            ..Default::default()
        },
        progress: false,
        only: None,
        statistics: Statistic::ALL.to_vec(),
        form: Some(form),
    };
    let t0 = Instant::now();
    let p = profile(&m, data, None, &opts)?;
    let secs = t0.elapsed().as_secs_f64();
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hwm =
        status.lines().find(|l| l.starts_with("VmHWM:")).unwrap_or("VmHWM: ?").trim_start_matches("VmHWM:").trim();
    println!("{} | {secs:.1} | {hwm}", p.tokens);
    Ok(())
}
