//! `profile.safetensors`: per-neuron activation statistics of one model on one data
//! file.
//!
//! Tensors: `<site>/<statistic>` (FLOAT `[neurons]`, statistic one of `mean`,
//! `mean_abs`, `mean_sq`, `frac_pos`, `max_abs`), `<site>/count` (INT64 `[1]`: the
//! tokens or rows counted) and `tokens` (INT64 `[1]`). Metadata: `format`
//! (`neft.profile/1`), `model`, `model_sha256`, `model_bytes`, `data`, `tokens`,
//! `examples`, `batches`, `sites` (JSON: the [`Site`]s, in order).

use super::sites::Site;
use crate::artifact::{SourceInfo, State, StateTensor};
use anyhow::{bail, Context};
use serde::Serialize;
use std::path::Path;

pub const PROFILE_FORMAT: &str = "neft.profile/1";

/// One per-neuron statistic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Statistic {
    Mean,
    MeanAbs,
    MeanSq,
    FracPos,
    MaxAbs,
}

impl Statistic {
    pub const ALL: [Statistic; 5] =
        [Statistic::Mean, Statistic::MeanAbs, Statistic::MeanSq, Statistic::FracPos, Statistic::MaxAbs];

    /// The tensor-name suffix in the profile.
    pub fn key(self) -> &'static str {
        match self {
            Statistic::Mean => "mean",
            Statistic::MeanAbs => "mean_abs",
            Statistic::MeanSq => "mean_sq",
            Statistic::FracPos => "frac_pos",
            Statistic::MaxAbs => "max_abs",
        }
    }
}

impl std::str::FromStr for Statistic {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.replace('-', "_");
        Statistic::ALL
            .into_iter()
            .find(|st| st.key() == s)
            .ok_or_else(|| format!("unknown statistic '{s}': use mean, mean-abs, mean-sq, frac-pos or max-abs"))
    }
}

/// The statistics of one site.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteStats {
    pub site: Site,
    /// Tokens (or rows) counted.
    pub count: u64,
    /// The statistics profiled, in [`Statistic::ALL`] order.
    pub values: Vec<(Statistic, Vec<f32>)>,
}

impl SiteStats {
    /// One statistic, if it was profiled.
    pub fn get(&self, stat: Statistic) -> Option<&[f32]> {
        self.values.iter().find(|(s, _)| *s == stat).map(|(_, v)| v.as_slice())
    }
}

/// A whole profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub source: SourceInfo,
    pub data: String,
    pub tokens: u64,
    pub examples: u64,
    pub batches: u64,
    pub sites: Vec<SiteStats>,
}

impl Profile {
    pub fn site(&self, name: &str) -> Option<&SiteStats> {
        self.sites.iter().find(|s| s.site.name == name)
    }

    /// The statistics the profile holds.
    pub fn statistics(&self) -> Vec<Statistic> {
        self.sites.first().map(|s| s.values.iter().map(|(st, _)| *st).collect()).unwrap_or_default()
    }

    /// Writes the file atomically.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut state = State::default();
        for s in &self.sites {
            for (stat, v) in &s.values {
                let t = StateTensor::F32 { shape: vec![v.len()], data: v.clone() };
                state.tensors.insert(format!("{}/{}", s.site.name, stat.key()), t);
            }
            let count = StateTensor::I64 { shape: vec![1], data: vec![s.count as i64] };
            state.tensors.insert(format!("{}/count", s.site.name), count);
        }
        state.tensors.insert("tokens".into(), StateTensor::I64 { shape: vec![1], data: vec![self.tokens as i64] });
        let sites: Vec<&Site> = self.sites.iter().map(|s| &s.site).collect();
        let meta = [
            ("format", PROFILE_FORMAT.to_string()),
            ("model", self.source.path.clone()),
            ("model_sha256", self.source.sha256.clone()),
            ("model_bytes", self.source.bytes.to_string()),
            ("data", self.data.clone()),
            ("tokens", self.tokens.to_string()),
            ("examples", self.examples.to_string()),
            ("batches", self.batches.to_string()),
            ("sites", serde_json::to_string(&sites)?),
            ("statistics", self.statistics().iter().map(|s| s.key()).collect::<Vec<_>>().join(",")),
        ];
        state.metadata = meta.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        state.save(path).with_context(|| format!("writing {}", path.display()))
    }

    pub fn load(path: &Path) -> anyhow::Result<Profile> {
        let file = path.display().to_string();
        let state = State::load(path)?;
        let meta = |key: &str| state.meta(&file, "neft profile", key);
        let number = |key: &str| -> anyhow::Result<u64> {
            meta(key)?.parse().with_context(|| format!("{file}: metadata '{key}' is not a number"))
        };
        if meta("format")? != PROFILE_FORMAT {
            bail!("{file}: metadata 'format' is '{}', expected '{PROFILE_FORMAT}'", meta("format")?);
        }
        let sites: Vec<Site> =
            serde_json::from_str(&meta("sites")?).with_context(|| format!("{file}: metadata 'sites' is not valid"))?;
        let stats: Vec<Statistic> = meta("statistics")?
            .split(',')
            .map(|k| k.parse().map_err(|e: String| anyhow::anyhow!("{file}: metadata 'statistics': {e}")))
            .collect::<anyhow::Result<_>>()?;
        let mut out = vec![];
        for site in sites {
            let tensor = |stat: &str| {
                let key = format!("{}/{stat}", site.name);
                match state.tensors.get(&key) {
                    Some(StateTensor::F32 { data, .. }) if data.len() == site.neurons => Ok(data.clone()),
                    Some(_) => bail!("{file}: tensor '{key}' should be FLOAT [{}]", site.neurons),
                    None => bail!("{file}: tensor '{key}' is missing"),
                }
            };
            let values = stats.iter().map(|st| Ok((*st, tensor(st.key())?))).collect::<anyhow::Result<_>>()?;
            let count = match state.tensors.get(&format!("{}/count", site.name)) {
                Some(StateTensor::I64 { data, .. }) if data.len() == 1 => data[0] as u64,
                _ => bail!("{file}: tensor '{}/count' is missing or not INT64 [1]", site.name),
            };
            out.push(SiteStats { site, count, values });
        }
        Ok(Profile {
            source: SourceInfo { path: meta("model")?, sha256: meta("model_sha256")?, bytes: number("model_bytes")? },
            data: meta("data")?,
            tokens: number("tokens")?,
            examples: number("examples")?,
            batches: number("batches")?,
            sites: out,
        })
    }
}

/// The model file's path, SHA-256 and size, as `plan.json` records them.
pub fn source_info(model: &crate::onnx::Model) -> anyhow::Result<SourceInfo> {
    SourceInfo::of_file(&model.path)
}

/// Sums (maxima for max |x|) over batches; turned into means at the end.
pub(super) struct Accumulator {
    stats: Vec<Statistic>,
    /// Per statistic, per neuron.
    totals: Vec<Vec<f64>>,
    count: u64,
}

impl Accumulator {
    pub fn new(neurons: usize, stats: &[Statistic]) -> Accumulator {
        Accumulator { stats: stats.to_vec(), totals: vec![vec![0.0; neurons]; stats.len()], count: 0 }
    }

    /// Adds one batch: `sums` is the site's `[k, n]` output, `count` its rows or tokens.
    pub fn add(&mut self, sums: &[f32], count: u64) {
        let n = self.totals.first().map_or(0, Vec::len);
        for ((stat, total), row) in self.stats.iter().zip(&mut self.totals).zip(sums.chunks(n.max(1))) {
            for (t, v) in total.iter_mut().zip(row) {
                *t = if *stat == Statistic::MaxAbs { t.max(*v as f64) } else { *t + *v as f64 };
            }
        }
        self.count += count;
    }

    pub fn finish(self, site: Site) -> SiteStats {
        let c = self.count.max(1) as f64;
        let values = self
            .stats
            .iter()
            .zip(self.totals)
            .map(|(stat, t)| {
                let scale = if *stat == Statistic::MaxAbs { 1.0 } else { c };
                (*stat, t.into_iter().map(|x| (x / scale) as f32).collect())
            })
            .collect();
        SiteStats { site, count: self.count, values }
    }
}
