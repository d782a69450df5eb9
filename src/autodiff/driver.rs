//! The reverse sweep: find the ops between the requested tensors and the loss, run
//! their rules from the loss backwards, add up the gradients of values used more
//! than once, and expose the results as `<t>.grad` outputs.

use super::emit::{Emitter, G};
use super::facts::{broadcast, dim_specs, dims_equal, is_float, Facts};
use super::rules::{self, Ctx, ZERO_GRAD};
use super::{opset, AutodiffError, GradOptions, GradOutput, GradReport, PASS_LABEL};
use crate::ir::{Graph, NodeIndex, TensorName};
use crate::onnx::proto::tensor_proto::DataType;
use crate::onnx::{dtype_name, make, Model};
use crate::runtime::tract::{self, Dim};
use std::collections::{BTreeMap, HashMap, HashSet};

type R<T> = Result<T, AutodiffError>;

pub(crate) enum Seeds {
    /// A loss with one element: its gradient is 1.
    Loss(TensorName),
    /// (value, the existing value holding its gradient).
    Given(Vec<(TensorName, TensorName)>),
}

pub(crate) fn run(source: &Graph, seeds: Seeds, wrt: &[TensorName], opts: &GradOptions) -> R<GradOutput> {
    let mut graph = source.clone();
    let mut report = GradReport { forward: count_ops(&graph), ..Default::default() };
    let opset = opset::raise(&mut graph, opts.opset)?;
    let model = Model::new(make::model(graph.to_proto(), opset), &opts.model_dir);
    let inferred = match tract::infer_partial(&model) {
        Ok((f, failure)) => {
            report.inference_warning = failure.map(|e| format!("{e:#}"));
            f
        }
        Err(e) => {
            report.inference_warning = Some(format!("{e:#}"));
            HashMap::new()
        }
    };
    let facts = Facts::new(&graph, inferred);

    let mut wrt_unique: Vec<TensorName> = vec![];
    for t in wrt {
        if !wrt_unique.contains(t) {
            wrt_unique.push(t.clone());
        }
    }
    let seed_values: Vec<(TensorName, Option<TensorName>)> = match &seeds {
        Seeds::Loss(l) => vec![(l.clone(), None)],
        Seeds::Given(v) => v.iter().map(|(y, dy)| (y.clone(), Some(dy.clone()))).collect(),
    };
    for (y, dy) in &seed_values {
        if graph.producer(y).is_none() {
            return Err(AutodiffError::UnknownLoss(y.clone()));
        }
        if let Some(dy) = dy.as_ref().filter(|d| graph.producer(d).is_none()) {
            return Err(AutodiffError::UnknownTensor(dy.clone()));
        }
    }
    for t in &wrt_unique {
        if graph.producer(t).is_none() {
            return Err(AutodiffError::UnknownTensor(t.clone()));
        }
        match facts.dtype(t) {
            Some(d) if is_float(d) => {}
            Some(d) => return Err(AutodiffError::NotFloat { name: t.clone(), dtype: dtype_name(d) }),
            None => return Err(AutodiffError::UnknownType { tensor: t.clone() }),
        }
    }
    let mut out_names = vec![];
    for t in &wrt_unique {
        let want = format!("{t}.grad");
        if graph.fresh_name(&want) != want {
            return Err(AutodiffError::NameTaken(want));
        }
        out_names.push(want);
    }

    let order = graph.ops_in_order();
    let seed_names: Vec<TensorName> = seed_values.iter().map(|(y, _)| y.clone()).collect();
    let (active, needed, on_path) = analyze(&graph, &facts, &order, &wrt_unique, &seed_names);
    check_rules(&graph, &order, &on_path, &active)?;

    graph.set_pass(Some(PASS_LABEL));
    let mut em = Emitter::new(graph, facts);
    em.variables = wrt_unique.iter().cloned().collect();
    let mut acc = Accumulator::default();
    for (y, dy) in &seed_values {
        if !active.contains(y) {
            continue;
        }
        let g = match dy {
            Some(dy) => G::exact(dy.clone()),
            None => loss_seed(&mut em, y)?,
        };
        acc.push(y, g);
    }
    for &idx in order.iter().rev().filter(|i| on_path.contains(i)) {
        let node = em.graph.op(idx).expect("an op").clone();
        em.hint = format!("d_{}", node.output.first().map(String::as_str).unwrap_or("op"));
        let mut dys = vec![];
        for o in &node.output {
            dys.push(if o.is_empty() { None } else { acc.total(&mut em, o)? });
        }
        if dys.iter().all(Option::is_none) {
            continue;
        }
        let needs: Vec<bool> = node.input.iter().map(|i| !i.is_empty() && needed.contains(i)).collect();
        if needs.iter().filter(|&&n| n).count() > 1 {
            // A factor carried into several branches would be applied once per branch.
            for g in dys.iter_mut().flatten().filter(|g| g.scale != 1.0) {
                *g = G { name: em.apply_scale(g)?, scale: 1.0, bshape: g.bshape.clone() };
            }
        }
        let rule = rules::lookup(node.op_type()).expect("checked by check_rules");
        let label = em.graph.describe(idx);
        let inputs = node.input.clone();
        let grads = rule(&mut Ctx { em: &mut em, node, label, dys, needs: needs.clone() })?;
        report.differentiated += 1;
        for (slot, g) in grads.into_iter().enumerate() {
            let (Some(g), true) = (g, needs.get(slot).copied().unwrap_or(false)) else { continue };
            let x = &inputs[slot];
            if g.bshape.is_none() && em.facts.shape(&g.name).is_none() {
                let (dtype, shape) = (em.facts.dtype(x), em.shape(x));
                em.facts.set(&g.name, dtype, shape);
            }
            acc.push(x, g);
        }
    }

    em.hint = "grad".into();
    let mut renamed: HashMap<TensorName, TensorName> = HashMap::new();
    for (t, out) in wrt_unique.iter().zip(&out_names) {
        let name = match acc.total(&mut em, t)? {
            Some(g) => em.materialize(&g, t)?,
            None => {
                report.unreachable.push(t.clone());
                em.zeros_like(t)?
            }
        };
        name_output(&mut em, &name, out, &mut renamed)?;
        let info = match (em.facts.dtype(t).and_then(|d| DataType::try_from(d).ok()), em.shape(t)) {
            (Some(dt), Some(shape)) => make::value_info(out, dt, &dim_specs(&shape)),
            (Some(dt), None) => make::value_info_unshaped(out, dt),
            _ => return Err(AutodiffError::UnknownType { tensor: t.clone() }),
        };
        em.graph.add_output(info)?;
        report.grads.push((t.clone(), out.clone()));
    }
    if let Seeds::Loss(l) = &seeds {
        if !em.graph.outputs().iter().any(|o| o.name() == l) {
            let dt = em.facts.dtype(l).and_then(|d| DataType::try_from(d).ok()).unwrap_or(DataType::Float);
            let info = match em.shape(l) {
                Some(shape) => make::value_info(l, dt, &dim_specs(&shape)),
                None => make::value_info_unshaped(l, dt),
            };
            em.graph.add_output(info)?;
        }
    }
    em.remove_unused()?;
    em.graph.set_pass(None);
    report.backward = em.counts.iter().filter(|(_, &n)| n > 0).map(|(k, &n)| (k.clone(), n)).collect();
    Ok(GradOutput { graph: em.graph, opset, report })
}

fn count_ops(graph: &Graph) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for idx in graph.op_indices() {
        *counts.entry(graph.op(idx).expect("an op").op_type().to_string()).or_default() += 1;
    }
    counts
}

/// Active values (float values depending on a requested tensor), needed values
/// (active values the loss depends on) and the ops to differentiate.
fn analyze(
    graph: &Graph,
    facts: &Facts,
    order: &[NodeIndex],
    wrt: &[TensorName],
    seeds: &[TensorName],
) -> (HashSet<TensorName>, HashSet<TensorName>, HashSet<NodeIndex>) {
    let mut active: HashSet<TensorName> = wrt.iter().cloned().collect();
    let mut touched: HashSet<NodeIndex> = wrt.iter().flat_map(|t| graph.consumers(t)).map(|(n, _)| n).collect();
    for &idx in order {
        let node = graph.op(idx).expect("an op");
        if !touched.contains(&idx) || (ZERO_GRAD.contains(&node.op_type()) && is_default_domain(node.domain())) {
            continue;
        }
        for o in node.output.iter().filter(|o| !o.is_empty()) {
            if facts.dtype(o).is_none_or(is_float) {
                active.insert(o.clone());
                touched.extend(graph.consumers(o).into_iter().map(|(n, _)| n));
            }
        }
    }
    let mut needed: HashSet<TensorName> = seeds.iter().filter(|s| active.contains(*s)).cloned().collect();
    let mut on_path = HashSet::new();
    for &idx in order.iter().rev() {
        let node = graph.op(idx).expect("an op");
        if !touched.contains(&idx) || !node.output.iter().any(|o| needed.contains(o)) {
            continue;
        }
        if ZERO_GRAD.contains(&node.op_type()) && is_default_domain(node.domain()) {
            continue;
        }
        on_path.insert(idx);
        needed.extend(node.input.iter().filter(|i| active.contains(*i)).cloned());
    }
    (active, needed, on_path)
}

fn is_default_domain(domain: &str) -> bool {
    domain.is_empty() || domain == "ai.onnx"
}

/// Every op on the path has a rule; else an error naming the first one.
fn check_rules(
    graph: &Graph,
    order: &[NodeIndex],
    on_path: &HashSet<NodeIndex>,
    active: &HashSet<TensorName>,
) -> R<()> {
    for &idx in order.iter().filter(|i| on_path.contains(i)) {
        let node = graph.op(idx).expect("an op");
        if is_default_domain(node.domain()) && rules::lookup(node.op_type()).is_some() {
            continue;
        }
        let op = if is_default_domain(node.domain()) {
            node.op_type().to_string()
        } else {
            format!("{}::{}", node.domain(), node.op_type())
        };
        let input =
            node.input.iter().find(|i| active.contains(*i)).cloned().unwrap_or_else(|| "<a subgraph input>".into());
        return Err(AutodiffError::NoRule {
            node: graph.describe(idx),
            op,
            input,
            known: rules::known_ops().join(", "),
        });
    }
    Ok(())
}

/// The gradient of a one-element loss: ones of its shape.
fn loss_seed(em: &mut Emitter, loss: &str) -> R<G> {
    let dtype = em.dtype(loss)?;
    match em.shape(loss) {
        Some(dims) => {
            let known: Option<Vec<i64>> = dims.iter().map(super::facts::known).collect();
            match known {
                Some(d) if d.iter().product::<i64>() == 1 => {
                    let raw = super::emit::float_bytes(&[1.0], dtype)
                        .ok_or_else(|| AutodiffError::UnknownType { tensor: loss.into() })?;
                    Ok(G::exact(em.constant(dtype, &d, raw)?))
                }
                _ => Err(AutodiffError::LossNotScalar {
                    name: loss.to_string(),
                    shape: dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "),
                }),
            }
        }
        None => {
            let shape = em.op("Shape", &[loss], vec![])?;
            let one = make::tensor_raw(
                "value",
                DataType::try_from(dtype).unwrap_or(DataType::Float),
                &[1],
                super::emit::float_bytes(&[1.0], dtype).unwrap_or_default(),
            );
            Ok(G::exact(em.op("ConstantOfShape", &[&shape], vec![crate::ir::attr::tensor("value", one)])?))
        }
    }
}

/// Gradient contributions per value, summed when first read.
#[derive(Default)]
struct Accumulator {
    parts: HashMap<TensorName, Vec<G>>,
}

impl Accumulator {
    fn push(&mut self, value: &str, g: G) {
        self.parts.entry(value.to_string()).or_default().push(g);
    }

    /// The total gradient of `value`: one `Sum` when several ops contributed, with
    /// the factors taken relative to the first part's (a part with the opposite
    /// factor is subtracted rather than negated).
    fn total(&mut self, em: &mut Emitter, value: &str) -> R<Option<G>> {
        let Some(parts) = self.parts.get(value).cloned() else { return Ok(None) };
        if parts.len() == 1 {
            return Ok(Some(parts[0].clone()));
        }
        let full = em.shape(value);
        let dims: Option<Vec<Dim>> =
            parts.iter().try_fold(vec![], |acc: Vec<Dim>, g| broadcast(&acc, &em.g_shape(g, value)?));
        let scale = parts[0].scale;
        let (mut plus, mut minus) = (vec![], vec![]);
        for g in &parts {
            let g = if dims.is_none() { em.exact(g, value)? } else { g.clone() };
            let ratio = g.scale / scale;
            if ratio == -1.0 {
                minus.push(g.name);
            } else {
                plus.push(em.mul_const(&g.name, ratio)?);
            }
        }
        let sum = |em: &mut Emitter, names: &[String]| -> R<String> {
            if names.len() == 1 {
                return Ok(names[0].clone());
            }
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            em.op("Sum", &refs, vec![])
        };
        let name = match (plus.is_empty(), minus.is_empty()) {
            (false, true) => sum(em, &plus)?,
            (false, false) => {
                let (p, m) = (sum(em, &plus)?, sum(em, &minus)?);
                em.sub(&p, &m)?
            }
            (true, _) => unreachable!("the first part has ratio 1"),
        };
        let is_full = match (&dims, &full) {
            (Some(d), Some(f)) => d.len() == f.len() && d.iter().zip(f).all(|(a, b)| dims_equal(a, b) == Some(true)),
            _ => true,
        };
        let bshape = if is_full { None } else { dims };
        let dtype = em.facts.dtype(value);
        em.facts.set(&name, dtype, bshape.clone().or(full));
        let total = G { name, scale, bshape };
        self.parts.insert(value.to_string(), vec![total.clone()]);
        Ok(Some(total))
    }
}

/// Gives the gradient `name` the output name `out`: renames the node that made it
/// when nothing else reads it, else adds an `Identity`.
fn name_output(em: &mut Emitter, name: &str, out: &str, renamed: &mut HashMap<TensorName, TensorName>) -> R<()> {
    let source = renamed.get(name).cloned().unwrap_or_else(|| name.to_string());
    let renamable = source == name
        && em.created.contains(name)
        && em.graph.consumers(name).is_empty()
        && !em.graph.outputs().iter().any(|o| o.name() == name);
    let producer = em.graph.producer(name).map(|p| p.0);
    if let (true, Some(idx)) = (renamable, producer) {
        let mut proto = em.graph.op(idx).expect("an op").clone();
        if proto.output.len() == 1 {
            em.graph.remove(idx)?;
            proto.output[0] = out.to_string();
            em.graph.set_pass(None); // the proto keeps its label
            em.graph.add_op(proto)?;
            em.graph.set_pass(Some(PASS_LABEL));
            let fact = (em.facts.dtype(name), em.shape(name));
            em.facts.set(out, fact.0, fact.1);
            renamed.insert(name.to_string(), out.to_string());
            return Ok(());
        }
    }
    let proto = make::node("Identity", &[&source], &[out], vec![]);
    em.graph.add_op(proto)?;
    *em.counts.entry("Identity".into()).or_default() += 1;
    Ok(())
}
