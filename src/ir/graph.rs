use super::scope::outer_names;
use super::TensorName;
use crate::onnx::proto::{GraphProto, NodeProto, SparseTensorProto, TensorProto, ValueInfoProto};
use petgraph::stable_graph::{NodeIndex, StableGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::collections::{HashMap, HashSet};

/// A node of the IR: where a value comes from.
#[derive(Debug, Clone)]
pub enum Node {
    /// A graph input.
    Input(ValueInfoProto),
    /// A dense initializer (its data may still be on disk).
    Initializer(TensorProto),
    /// A sparse initializer; its value is named by `values.name`.
    SparseInitializer(SparseTensorProto),
    /// An operator; `order` keeps the position it had in the source graph.
    Op { proto: NodeProto, order: u64 },
}

/// An edge: the tensor `name`, output `from_slot` of its producer, input `to_slot` of its
/// consumer (`None` when a subgraph of the consumer reads it from the outer scope).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wire {
    pub name: TensorName,
    pub from_slot: usize,
    pub to_slot: Option<usize>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum IrError {
    #[error("node {node}: input '{name}' is not produced by any node, graph input or initializer")]
    Dangling { node: String, name: String },
    #[error("graph output '{name}' is not produced by any node, graph input or initializer")]
    DanglingOutput { name: String },
    #[error("value '{name}' is produced twice: by {first} and by {second}")]
    Duplicate { name: String, first: String, second: String },
    #[error("the graph has a cycle through nodes {nodes}")]
    Cycle { nodes: String },
    #[error("{0}")]
    Misuse(String),
}

/// The graph IR. See the module docs.
#[derive(Debug, Clone)]
pub struct Graph {
    pub(crate) g: StableGraph<Node, Wire>,
    /// Value name → its producer and output slot. A graph input shadows an initializer
    /// of the same name (the initializer is then only its default).
    producer: HashMap<TensorName, (NodeIndex, usize)>,
    initializer_index: HashMap<TensorName, NodeIndex>,
    inputs: Vec<NodeIndex>,
    initializers: Vec<NodeIndex>,
    sparse_initializers: Vec<NodeIndex>,
    outputs: Vec<ValueInfoProto>,
    /// The remaining GraphProto fields (name, doc string, value_info, annotations, metadata).
    shell: GraphProto,
    pub(super) next_order: u64,
    pub(super) taken: HashSet<String>,
    /// Label written into nodes that passes add (`neft.pass` metadata).
    pub(super) pass: Option<String>,
}

impl Graph {
    /// Imports a graph, checking that every value has exactly one producer and that
    /// there is no cycle.
    pub fn from_proto(proto: &GraphProto) -> Result<Graph, IrError> {
        let mut shell = proto.clone();
        shell.node.clear();
        shell.initializer.clear();
        shell.sparse_initializer.clear();
        shell.input.clear();
        shell.output.clear();
        let mut graph = Graph {
            g: StableGraph::new(),
            producer: HashMap::new(),
            initializer_index: HashMap::new(),
            inputs: vec![],
            initializers: vec![],
            sparse_initializers: vec![],
            outputs: proto.output.clone(),
            shell,
            next_order: 0,
            taken: HashSet::new(),
            pass: None,
        };
        for t in &proto.initializer {
            let idx = graph.g.add_node(Node::Initializer(t.clone()));
            graph.initializers.push(idx);
            graph.define_initializer(t.name(), idx)?;
        }
        for s in &proto.sparse_initializer {
            let name = s.values.as_ref().map(|v| v.name()).unwrap_or_default().to_string();
            let idx = graph.g.add_node(Node::SparseInitializer(s.clone()));
            graph.sparse_initializers.push(idx);
            graph.define_initializer(&name, idx)?;
        }
        for v in &proto.input {
            let idx = graph.g.add_node(Node::Input(v.clone()));
            graph.inputs.push(idx);
            // An input named like an initializer overrides it (IR < 4 listed weights as inputs).
            graph.producer.insert(v.name().to_string(), (idx, 0));
            graph.taken.insert(v.name().to_string());
        }
        let mut ops = Vec::with_capacity(proto.node.len());
        for n in &proto.node {
            let order = graph.next_order;
            graph.next_order += 1;
            let idx = graph.g.add_node(Node::Op { proto: n.clone(), order });
            graph.define_outputs(idx)?;
            ops.push(idx);
        }
        for idx in ops {
            graph.connect_inputs(idx)?;
        }
        for o in &graph.outputs {
            if !graph.producer.contains_key(o.name()) {
                return Err(IrError::DanglingOutput { name: o.name().to_string() });
            }
        }
        graph.topo_order()?;
        Ok(graph)
    }

    /// Exports the graph; ops come in topological order, original order first.
    pub fn to_proto(&self) -> GraphProto {
        let mut proto = self.shell.clone();
        let order = self.topo_order().expect("passes keep the graph acyclic");
        proto.node = order.iter().filter_map(|&i| self.op(i).cloned()).collect();
        proto.initializer = self
            .initializers
            .iter()
            .filter_map(|&i| match &self.g[i] {
                Node::Initializer(t) => Some(t.clone()),
                _ => None,
            })
            .collect();
        proto.sparse_initializer = self
            .sparse_initializers
            .iter()
            .filter_map(|&i| match &self.g[i] {
                Node::SparseInitializer(s) => Some(s.clone()),
                _ => None,
            })
            .collect();
        proto.input = self
            .inputs
            .iter()
            .filter_map(|&i| match &self.g[i] {
                Node::Input(v) => Some(v.clone()),
                _ => None,
            })
            .collect();
        proto.output = self.outputs.clone();
        proto
    }

    fn define_initializer(&mut self, name: &str, idx: NodeIndex) -> Result<(), IrError> {
        if let Some(&prev) = self.initializer_index.get(name) {
            return Err(IrError::Duplicate {
                name: name.into(),
                first: self.describe(prev),
                second: self.describe(idx),
            });
        }
        self.initializer_index.insert(name.to_string(), idx);
        self.producer.insert(name.to_string(), (idx, 0));
        self.taken.insert(name.to_string());
        Ok(())
    }

    fn define_outputs(&mut self, idx: NodeIndex) -> Result<(), IrError> {
        let outputs = self.op(idx).map(|p| p.output.clone()).unwrap_or_default();
        for (slot, name) in outputs.iter().enumerate() {
            if name.is_empty() {
                continue; // an optional output left unused
            }
            if let Some(&(prev, _)) = self.producer.get(name) {
                return Err(IrError::Duplicate {
                    name: name.clone(),
                    first: self.describe(prev),
                    second: self.describe(idx),
                });
            }
            self.producer.insert(name.clone(), (idx, slot));
            self.taken.insert(name.clone());
        }
        if let Some(n) = self.op(idx).map(|p| p.name().to_string()).filter(|n| !n.is_empty()) {
            self.taken.insert(n);
        }
        Ok(())
    }

    fn connect_inputs(&mut self, idx: NodeIndex) -> Result<(), IrError> {
        let proto = self.op(idx).cloned().unwrap_or_default();
        let explicit = proto.input.iter().enumerate().filter(|(_, n)| !n.is_empty()).map(|(s, n)| (n.clone(), Some(s)));
        let implicit = outer_names(&proto).into_iter().map(|n| (n, None));
        for (name, to_slot) in explicit.chain(implicit).collect::<Vec<_>>() {
            let Some(&(src, from_slot)) = self.producer.get(&name) else {
                return Err(IrError::Dangling { node: self.describe(idx), name });
            };
            self.g.add_edge(src, idx, Wire { name, from_slot, to_slot });
        }
        Ok(())
    }

    // ---- queries ----

    pub fn node(&self, idx: NodeIndex) -> &Node {
        &self.g[idx]
    }

    /// The op's proto, if `idx` is an op.
    pub fn op(&self, idx: NodeIndex) -> Option<&NodeProto> {
        match self.g.node_weight(idx)? {
            Node::Op { proto, .. } => Some(proto),
            _ => None,
        }
    }

    pub(super) fn op_order(&self, idx: NodeIndex) -> u64 {
        match &self.g[idx] {
            Node::Op { order, .. } => *order,
            _ => 0,
        }
    }

    /// Node indices of all ops, in no particular order.
    pub fn op_indices(&self) -> impl Iterator<Item = NodeIndex> + '_ {
        self.g.node_indices().filter(|&i| matches!(self.g[i], Node::Op { .. }))
    }

    pub fn op_count(&self) -> usize {
        self.op_indices().count()
    }

    /// Who produces `name`, and at which output slot.
    pub fn producer(&self, name: &str) -> Option<(NodeIndex, usize)> {
        self.producer.get(name).copied()
    }

    /// The ops that read `name`, with the input slot (`None`: read by a subgraph).
    pub fn consumers(&self, name: &str) -> Vec<(NodeIndex, Option<usize>)> {
        let Some((src, _)) = self.producer(name) else {
            return vec![];
        };
        let mut uses: Vec<_> = self
            .g
            .edges_directed(src, Direction::Outgoing)
            .filter(|e| e.weight().name == name)
            .map(|e| (e.target(), e.weight().to_slot))
            .collect();
        uses.sort_by_key(|&(n, s)| (self.op_order(n), s));
        uses
    }

    /// The initializer called `name` (also when a graph input of that name overrides it).
    pub fn initializer(&self, name: &str) -> Option<&TensorProto> {
        match self.g.node_weight(*self.initializer_index.get(name)?)? {
            Node::Initializer(t) => Some(t),
            _ => None,
        }
    }

    pub fn initializers(&self) -> impl Iterator<Item = &TensorProto> + '_ {
        self.initializers.iter().filter_map(|&i| match &self.g[i] {
            Node::Initializer(t) => Some(t),
            _ => None,
        })
    }

    pub fn sparse_initializers(&self) -> impl Iterator<Item = &SparseTensorProto> + '_ {
        self.sparse_initializers.iter().filter_map(|&i| match &self.g[i] {
            Node::SparseInitializer(s) => Some(s),
            _ => None,
        })
    }

    /// Graph inputs, in order (including any that only override an initializer).
    pub fn inputs(&self) -> impl Iterator<Item = &ValueInfoProto> + '_ {
        self.inputs.iter().filter_map(|&i| match &self.g[i] {
            Node::Input(v) => Some(v),
            _ => None,
        })
    }

    pub fn outputs(&self) -> &[ValueInfoProto] {
        &self.outputs
    }

    /// `value_info` entries recorded in the source graph.
    pub fn value_info(&self) -> &[ValueInfoProto] {
        &self.shell.value_info
    }

    /// A readable name for messages: `'name' (OpType)` or `#position OpType`.
    pub fn describe(&self, idx: NodeIndex) -> String {
        match self.g.node_weight(idx) {
            Some(Node::Op { proto, order }) if proto.name().is_empty() => {
                format!("#{order} ({})", proto.op_type())
            }
            Some(Node::Op { proto, .. }) => format!("'{}' ({})", proto.name(), proto.op_type()),
            Some(Node::Input(v)) => format!("graph input '{}'", v.name()),
            Some(Node::Initializer(t)) => format!("initializer '{}'", t.name()),
            Some(Node::SparseInitializer(s)) => {
                format!("sparse initializer '{}'", s.values.as_ref().map(|v| v.name()).unwrap_or_default())
            }
            None => format!("<removed node {}>", idx.index()),
        }
    }

    // ---- edits used by passes ----

    /// Adds an op whose inputs already exist. Its outputs must be new names.
    pub fn add_op(&mut self, mut proto: NodeProto) -> Result<NodeIndex, IrError> {
        if let Some(label) = &self.pass {
            proto.metadata_props.push(crate::onnx::proto::StringStringEntryProto {
                key: Some(PASS_KEY.into()),
                value: Some(label.clone()),
            });
        }
        let order = self.next_order;
        self.next_order += 1;
        let idx = self.g.add_node(Node::Op { proto, order });
        let connected = self.define_outputs(idx).and_then(|_| self.connect_inputs(idx));
        if let Err(e) = connected {
            self.detach(idx);
            return Err(e);
        }
        Ok(idx)
    }

    /// Adds a dense initializer with a new name.
    pub fn add_initializer(&mut self, tensor: TensorProto) -> Result<(), IrError> {
        self.ensure_free(tensor.name())?;
        self.push_initializer(tensor)
    }

    /// Adds an initializer whose name the caller reserved with `fresh_name`.
    pub(super) fn push_initializer(&mut self, tensor: TensorProto) -> Result<(), IrError> {
        let idx = self.g.add_node(Node::Initializer(tensor.clone()));
        self.initializers.push(idx);
        self.define_initializer(tensor.name(), idx)
    }

    /// Adds a graph input with a new name.
    pub fn add_input(&mut self, info: ValueInfoProto) -> Result<(), IrError> {
        self.ensure_free(info.name())?;
        let name = info.name().to_string();
        let idx = self.g.add_node(Node::Input(info));
        self.inputs.push(idx);
        self.producer.insert(name.clone(), (idx, 0));
        self.taken.insert(name);
        Ok(())
    }

    /// Turns the initializer `name` into a graph input of the same name and type
    /// (every reader stays connected); returns the initializer it was.
    pub fn promote_to_input(&mut self, name: &str) -> Result<TensorProto, IrError> {
        let idx = *self
            .initializer_index
            .get(name)
            .ok_or_else(|| IrError::Misuse(format!("'{name}' is not an initializer")))?;
        if self.producer.get(name).map(|p| p.0) != Some(idx) {
            return Err(IrError::Misuse(format!("'{name}' is already overridden by a graph input")));
        }
        let Node::Initializer(t) = self.g[idx].clone() else {
            return Err(IrError::Misuse(format!("'{name}' is a sparse initializer")));
        };
        let dims: Vec<crate::onnx::make::DimSpec> = t.dims.iter().map(|&d| d.into()).collect();
        let dtype = crate::onnx::DataType::try_from(t.data_type()).unwrap_or(crate::onnx::DataType::Float);
        self.g[idx] = Node::Input(crate::onnx::make::value_info(name, dtype, &dims));
        self.initializer_index.remove(name);
        self.initializers.retain(|&i| i != idx);
        self.inputs.push(idx);
        Ok(t)
    }

    /// Makes an existing value a graph output.
    pub fn add_output(&mut self, info: ValueInfoProto) -> Result<(), IrError> {
        if !self.producer.contains_key(info.name()) {
            return Err(IrError::DanglingOutput { name: info.name().to_string() });
        }
        self.outputs.push(info);
        Ok(())
    }

    /// Replaces the graph outputs.
    pub fn set_outputs(&mut self, outputs: Vec<ValueInfoProto>) -> Result<(), IrError> {
        if let Some(o) = outputs.iter().find(|o| !self.producer.contains_key(o.name())) {
            return Err(IrError::DanglingOutput { name: o.name().to_string() });
        }
        self.outputs = outputs;
        Ok(())
    }

    /// Makes input `slot` of op `idx` read `name` instead.
    pub fn set_input(&mut self, idx: NodeIndex, slot: usize, name: &str) -> Result<(), IrError> {
        let &(src, from_slot) = self
            .producer
            .get(name)
            .ok_or_else(|| IrError::Dangling { node: self.describe(idx), name: name.to_string() })?;
        let old: Vec<_> = self
            .g
            .edges_directed(idx, Direction::Incoming)
            .filter(|e| e.weight().to_slot == Some(slot))
            .map(|e| e.id())
            .collect();
        for e in old {
            self.g.remove_edge(e);
        }
        match self.g.node_weight_mut(idx) {
            Some(Node::Op { proto, .. }) if slot < proto.input.len() => proto.input[slot] = name.to_string(),
            _ => return Err(IrError::Misuse(format!("{} has no input slot {slot}", self.describe(idx)))),
        }
        self.g.add_edge(src, idx, Wire { name: name.to_string(), from_slot, to_slot: Some(slot) });
        Ok(())
    }

    /// Makes every explicit reader of `old` (ops and graph outputs) read `new` instead,
    /// except the ops in `keep` and the producer of `new` (which would form a cycle).
    pub fn replace_uses(&mut self, old: &str, new: &str, keep: &[NodeIndex]) -> Result<(), IrError> {
        let new_producer = self.producer(new).map(|p| p.0);
        for (node, slot) in self.consumers(old) {
            match slot {
                Some(_) if Some(node) == new_producer => {}
                Some(slot) if !keep.contains(&node) => self.set_input(node, slot, new)?,
                Some(_) => {}
                None => {
                    return Err(IrError::Misuse(format!(
                        "cannot rewire '{old}': a subgraph of {} reads it from the outer scope",
                        self.describe(node)
                    )))
                }
            }
        }
        for o in &mut self.outputs {
            if o.name() == old {
                o.name = Some(new.to_string());
            }
        }
        Ok(())
    }

    /// Renames the value `old` to the unused name `new`: its definition, every reader
    /// and graph output follow.
    pub fn rename_value(&mut self, old: &str, new: &str) -> Result<(), IrError> {
        self.ensure_free(new)?;
        let (src, slot) =
            self.producer(old).ok_or_else(|| IrError::Misuse(format!("'{old}' is not a value of the graph")))?;
        let edges: Vec<_> = self
            .g
            .edges_directed(src, Direction::Outgoing)
            .filter(|e| e.weight().name == old)
            .map(|e| e.id())
            .collect();
        if let Some(&e) = edges.iter().find(|&&e| self.g[e].to_slot.is_none()) {
            let reader = self.g.edge_endpoints(e).expect("edge exists").1;
            return Err(IrError::Misuse(format!(
                "cannot rename '{old}': a subgraph of {} reads it by name",
                self.describe(reader)
            )));
        }
        match self.g.node_weight_mut(src) {
            Some(Node::Op { proto, .. }) => proto.output[slot] = new.to_string(),
            _ => return Err(IrError::Misuse(format!("only op outputs can be renamed, not '{old}'"))),
        }

        for e in edges {
            let (_, target) = self.g.edge_endpoints(e).expect("edge exists");
            let to_slot = self.g[e].to_slot;
            self.g[e].name = new.to_string();
            if let (Some(slot), Some(Node::Op { proto, .. })) = (to_slot, self.g.node_weight_mut(target)) {
                proto.input[slot] = new.to_string();
            }
        }
        for o in &mut self.outputs {
            if o.name() == old {
                o.name = Some(new.to_string());
            }
        }
        self.producer.remove(old);
        self.producer.insert(new.to_string(), (src, slot));
        self.taken.insert(new.to_string());
        Ok(())
    }

    /// Removes an op or initializer; none of its outputs may still be read.
    pub fn remove(&mut self, idx: NodeIndex) -> Result<(), IrError> {
        if let Some(e) = self.g.edges_directed(idx, Direction::Outgoing).next() {
            return Err(IrError::Misuse(format!(
                "cannot remove {}: '{}' is still read by {}",
                self.describe(idx),
                e.weight().name,
                self.describe(e.target())
            )));
        }
        let names = self.defined_names(idx);
        if let Some(o) = self.outputs.iter().find(|o| names.contains(&o.name().to_string())) {
            return Err(IrError::Misuse(format!(
                "cannot remove {}: '{}' is a graph output",
                self.describe(idx),
                o.name()
            )));
        }
        self.detach(idx);
        Ok(())
    }

    fn defined_names(&self, idx: NodeIndex) -> Vec<String> {
        match &self.g[idx] {
            Node::Op { proto, .. } => proto.output.iter().filter(|o| !o.is_empty()).cloned().collect(),
            Node::Input(v) => vec![v.name().to_string()],
            Node::Initializer(t) => vec![t.name().to_string()],
            Node::SparseInitializer(s) => vec![s.values.as_ref().map(|v| v.name()).unwrap_or_default().to_string()],
        }
    }

    /// Drops a node and every name it defines, whatever still reads it.
    fn detach(&mut self, idx: NodeIndex) {
        for name in self.defined_names(idx) {
            if self.producer.get(&name).map(|p| p.0) == Some(idx) {
                self.producer.remove(&name);
            }
            if self.initializer_index.get(&name) == Some(&idx) {
                self.initializer_index.remove(&name);
            } else if let Some(&init) = self.initializer_index.get(&name) {
                // A removed graph input uncovers the initializer it overrode.
                self.producer.insert(name.clone(), (init, 0));
            }
        }
        self.inputs.retain(|&i| i != idx);
        self.initializers.retain(|&i| i != idx);
        self.sparse_initializers.retain(|&i| i != idx);
        self.g.remove_node(idx);
    }

    /// A new value may take `name` if no value has it yet (a name reserved with
    /// `fresh_name` is free until something defines it).
    fn ensure_free(&self, name: &str) -> Result<(), IrError> {
        if name.is_empty() || self.producer.contains_key(name) || self.initializer_index.contains_key(name) {
            return Err(IrError::Misuse(format!("name '{name}' is empty or already used in the graph")));
        }
        Ok(())
    }

    /// Removes initializers nothing reads (graph outputs count as readers).
    pub fn eliminate_dead_initializers(&mut self) -> usize {
        let outputs: HashSet<String> = self.outputs.iter().map(|o| o.name().to_string()).collect();
        let dead: Vec<NodeIndex> = self
            .initializers
            .iter()
            .copied()
            .filter(|&i| {
                self.g.edges_directed(i, Direction::Outgoing).next().is_none()
                    && !self.defined_names(i).iter().any(|n| outputs.contains(n))
            })
            .collect();
        for &i in &dead {
            self.detach(i);
        }
        dead.len()
    }

    /// Removes ops and initializers that no graph output depends on. Graph inputs stay
    /// (they are the model's interface). Returns how many nodes were removed.
    pub fn eliminate_dead(&mut self) -> usize {
        let mut live: HashSet<NodeIndex> = HashSet::new();
        let mut stack: Vec<NodeIndex> =
            self.outputs.iter().filter_map(|o| self.producer(o.name())).map(|p| p.0).collect();
        while let Some(n) = stack.pop() {
            if live.insert(n) {
                stack.extend(self.g.neighbors_directed(n, Direction::Incoming));
            }
        }
        let dead: Vec<NodeIndex> =
            self.g.node_indices().filter(|i| !live.contains(i) && !matches!(self.g[*i], Node::Input(_))).collect();
        for &i in &dead {
            self.detach(i);
        }
        dead.len()
    }
}

/// Metadata key marking the nodes a neft pass added, with the pass's label.
pub const PASS_KEY: &str = "neft.pass";
