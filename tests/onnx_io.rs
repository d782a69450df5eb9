//! ONNX in and out: round trips keep every field, the IR gives back the original
//! graph, ONNX Runtime runs what we write, and bad files get clear errors.

use bytes::Bytes;
use neft::ir::Graph;
use neft::onnx::make::{self, DimSpec};
use neft::onnx::proto::*;
use neft::onnx::{self, DataType, ExternalWriter, Model};
use neft::runtime::ort::{HostTensor, Session, SessionOptions};
use std::path::{Path, PathBuf};

fn entry(k: &str, v: &str) -> StringStringEntryProto {
    StringStringEntryProto { key: Some(k.into()), value: Some(v.into()) }
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Real graphs nobody here wrote: the onnx wheel's light models (fetched by
/// .ci/setup) and the PyTorch exports in models/fixtures.
fn real_models() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo(".cache/onnx-light"))
        .expect(".cache/onnx-light is missing: run `bash .ci/setup`")
        .map(|e| e.unwrap().path())
        .collect();
    assert!(files.len() >= 9, "expected the 9 light models, found {}", files.len());
    for f in ["tiny_llama", "tiny_bert", "mlp_loss", "convnet"] {
        files.push(repo(&format!("models/fixtures/{f}.onnx")));
    }
    files.sort();
    files
}

/// A model that sets every kind of field the format has.
fn every_field_model() -> ModelProto {
    let mut attr_graph = make::node("Identity", &["x"], &["then_out"], vec![]);
    attr_graph.metadata_props.push(entry("inner", "node"));
    let then_branch = GraphProto {
        name: Some("then".into()),
        node: vec![attr_graph],
        output: vec![make::value_info("then_out", DataType::Float, &[DimSpec::Named("n".into())])],
        ..Default::default()
    };
    let mut tp_attr = neft::ir::attr::int("unused", 1);
    tp_attr.tp = Some(TypeProto {
        value: Some(type_proto::Value::SequenceType(Box::new(type_proto::Sequence {
            elem_type: Some(Box::new(make::tensor_type(DataType::Float, None))),
        }))),
        denotation: Some("seq".into()),
    });
    let mut iff = make::node("If", &["cond"], &["y"], vec![]);
    let mut g_attr = neft::ir::attr::int("then_branch", 0);
    g_attr.i = None;
    g_attr.g = Some(then_branch.clone());
    g_attr.set_type(attribute_proto::AttributeType::Graph);
    let mut else_attr = g_attr.clone();
    else_attr.name = Some("else_branch".into());
    iff.attribute = vec![g_attr, else_attr];
    iff.metadata_props.push(entry("node-key", "node-value"));
    iff.doc_string = Some("an If".into());
    iff.device_configurations.push(NodeDeviceConfigurationProto {
        configuration_id: Some("cfg".into()),
        sharding_spec: vec![ShardingSpecProto {
            tensor_name: Some("y".into()),
            device: vec![0, 1],
            index_to_device_group_map: vec![IntIntListEntryProto { key: Some(0), value: vec![0, 1] }],
            sharded_dim: vec![ShardedDimProto {
                axis: Some(0),
                simple_sharding: vec![SimpleShardedDimProto {
                    dim: Some(simple_sharded_dim_proto::Dim::DimParam("n".into())),
                    num_shards: Some(2),
                }],
            }],
        }],
        pipeline_stage: Some(0),
    });
    let mut typed = TensorProto {
        name: Some("typed".into()),
        data_type: Some(DataType::Float as i32),
        dims: vec![2],
        float_data: vec![1.5, -2.0],
        doc_string: Some("typed floats".into()),
        metadata_props: vec![entry("t", "m")],
        ..Default::default()
    };
    typed.segment = Some(tensor_proto::Segment { begin: Some(0), end: Some(2) });
    let sparse = SparseTensorProto {
        values: Some(make::tensor_f32("sparse", &[2], &[3.0, 4.0])),
        indices: Some(make::tensor_i64("sparse_idx", &[2], &[1, 5])),
        dims: vec![8],
    };
    let mut graph = GraphProto {
        name: Some("everything".into()),
        node: vec![make::node("Add", &["x", "typed"], &["x2"], vec![tp_attr]), iff],
        initializer: vec![typed, make::tensor_i64("ints", &[3], &[1, -2, 3])],
        sparse_initializer: vec![sparse],
        doc_string: Some("graph doc".into()),
        input: vec![
            make::value_info("x", DataType::Float, &[DimSpec::Named("n".into())]),
            ValueInfoProto {
                name: Some("cond".into()),
                r#type: Some(make::tensor_type(DataType::Bool, Some(&[]))),
                doc_string: Some("condition".into()),
                metadata_props: vec![entry("vi", "meta")],
            },
        ],
        output: vec![make::value_info("y", DataType::Float, &[DimSpec::Named("n".into())])],
        value_info: vec![make::value_info("x2", DataType::Float, &[2.into()])],
        quantization_annotation: vec![TensorAnnotation {
            tensor_name: Some("x2".into()),
            quant_parameter_tensor_names: vec![entry("SCALE_TENSOR", "s")],
        }],
        metadata_props: vec![entry("graph-key", "graph-value")],
    };
    graph.value_info.push(ValueInfoProto {
        name: Some("map".into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::MapType(Box::new(type_proto::Map {
                key_type: Some(DataType::Int64 as i32),
                value_type: Some(Box::new(TypeProto {
                    value: Some(type_proto::Value::OptionalType(Box::new(type_proto::Optional {
                        elem_type: Some(Box::new(make::tensor_type(DataType::Float, Some(&[3.into()])))),
                    }))),
                    denotation: None,
                })),
            }))),
            denotation: None,
        }),
        ..Default::default()
    });
    let mut model = make::model(graph, 18);
    model.ir_version = Some(11);
    model.domain = Some("ai.neft.test".into());
    model.model_version = Some(7);
    model.doc_string = Some("every field".into());
    model.metadata_props = vec![entry("model-key", "model-value")];
    model.opset_import.push(OperatorSetIdProto { domain: Some("custom".into()), version: Some(1) });
    model.training_info = vec![TrainingInfoProto {
        initialization: Some(GraphProto { name: Some("init".into()), ..Default::default() }),
        algorithm: Some(then_branch),
        initialization_binding: vec![entry("a", "b")],
        update_binding: vec![entry("typed", "then_out")],
    }];
    model.functions = vec![FunctionProto {
        name: Some("Double".into()),
        input: vec!["a".into()],
        output: vec!["b".into()],
        attribute: vec!["alpha".into()],
        attribute_proto: vec![neft::ir::attr::float("beta", 0.5)],
        node: vec![make::node("Add", &["a", "a"], &["b"], vec![])],
        doc_string: Some("doubles".into()),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(18) }],
        domain: Some("custom".into()),
        overload: Some("v1".into()),
        value_info: vec![make::value_info("b", DataType::Float, &[])],
        metadata_props: vec![entry("f", "meta")],
    }];
    model.configuration = vec![DeviceConfigurationProto {
        name: Some("cfg".into()),
        num_devices: Some(2),
        device: vec!["cuda:0".into(), "cuda:1".into()],
    }];
    model
}

fn roundtrip_file(path: &Path, dir: &Path) -> (Model, Model) {
    let a = onnx::load(path).unwrap_or_else(|e| panic!("{e}"));
    let out = dir.join(path.file_name().unwrap());
    onnx::save(&a, &out).unwrap();
    let b = onnx::load(&out).unwrap();
    (a, b)
}

#[test]
fn every_field_survives_a_round_trip_with_external_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut proto = every_field_model();
    // Move one initializer and the sparse values to an external file.
    let mut w = ExternalWriter::create(dir.path(), "weights.bin").unwrap();
    let graph = proto.graph.as_mut().unwrap();
    let ints = &mut graph.initializer[1];
    let raw = ints.raw_data.clone().unwrap();
    w.write(ints, &raw).unwrap();
    let values = graph.sparse_initializer[0].values.as_mut().unwrap();
    let raw = values.raw_data.clone().unwrap();
    w.write(values, &raw).unwrap();
    w.finish().unwrap();
    let path = dir.path().join("m.onnx");
    onnx::save(&Model::new(proto.clone(), dir.path()), &path).unwrap();

    let a = onnx::load(&path).unwrap();
    assert_eq!(a.proto, proto, "load after save changed the model");
    let other = tempfile::tempdir().unwrap();
    let (_, b) = roundtrip_file(&path, other.path());
    assert_eq!(b.proto, proto, "a round trip into another folder changed the model");
    assert!(other.path().join("weights.bin").is_file(), "external data were not carried along");
    // The external values read back intact, from either copy.
    let g = b.graph();
    assert_eq!(
        b.tensor_bytes(&g.initializer[1]).unwrap(),
        Bytes::from([1i64, -2, 3].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())
    );
    assert_eq!(b.tensor_f32(g.sparse_initializer[0].values.as_ref().unwrap()).unwrap(), vec![3.0, 4.0]);
    assert_eq!(a.tensor_f32(&g.initializer[0]).unwrap(), vec![1.5, -2.0], "typed float_data");
    // And the IR gives back the same graph.
    let ir = Graph::from_proto(a.graph()).unwrap();
    assert_eq!(&ir.to_proto(), a.graph());
}

#[test]
fn real_graphs_round_trip_unchanged_through_file_and_ir() {
    let dir = tempfile::tempdir().unwrap();
    for path in real_models() {
        let (a, b) = roundtrip_file(&path, dir.path());
        assert_eq!(a.proto, b.proto, "{}: load-save-load changed the model", path.display());
        let ir = Graph::from_proto(a.graph()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(&ir.to_proto(), a.graph(), "{}: IR import-export changed the graph", path.display());
    }
}

#[test]
fn onnx_runtime_runs_what_the_ir_exports_with_identical_outputs() {
    let dir = tempfile::tempdir().unwrap();
    for path in real_models() {
        let a = onnx::load(&path).unwrap();
        let mut exported = a.clone();
        exported.proto.graph = Some(Graph::from_proto(a.graph()).unwrap().to_proto());
        let out = dir.path().join(path.file_name().unwrap());
        onnx::save(&exported, &out).unwrap();
        let inputs = neft::inspect::synthetic_inputs(&a, 2).unwrap();
        let feed: Vec<(&str, HostTensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
        let opts = SessionOptions { threads: Some(1), ..Default::default() };
        let want = Session::from_file(&path, &opts).unwrap().run(&feed).unwrap();
        let got = Session::from_file(&out, &opts).unwrap().run(&feed).unwrap();
        assert_eq!(want, got, "{}: outputs differ", path.display());
    }
}

#[test]
fn external_data_written_by_neft_runs_in_onnx_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let w_vals: Vec<f32> = (0..12).map(|k| k as f32 * 0.5 - 2.0).collect();
    let mut w = make::tensor_f32("w", &[3, 4], &w_vals);
    let mut writer = ExternalWriter::create(dir.path(), "model.data").unwrap();
    let raw = w.raw_data.clone().unwrap();
    writer.write(&mut w, &raw).unwrap();
    writer.finish().unwrap();
    let graph = GraphProto {
        name: Some("mm".into()),
        node: vec![make::node("MatMul", &["x", "w"], &["y"], vec![])],
        initializer: vec![w],
        input: vec![make::value_info("x", DataType::Float, &["batch".into(), 3.into()])],
        output: vec![make::value_info("y", DataType::Float, &["batch".into(), 4.into()])],
        ..Default::default()
    };
    let path = dir.path().join("mm.onnx");
    onnx::save(&Model::new(make::model(graph, 18), dir.path()), &path).unwrap();
    let mut s = Session::from_file(&path, &SessionOptions::default()).unwrap();
    let out = s.run(&[("x", HostTensor::f32(&[1, 3], vec![1.0, 0.0, 1.0]))]).unwrap();
    let y = out[0].1.as_f32().unwrap();
    let want: Vec<f32> = (0..4).map(|j| w_vals[j] + w_vals[8 + j]).collect();
    assert_eq!(y.iter().copied().collect::<Vec<_>>(), want);
}

#[test]
fn external_data_beyond_two_gigabytes_is_read_in_place() {
    // A sparse 2.5 GB data file: the tensor lies past the 2 GiB mark, where 32-bit
    // offsets or a read into one buffer would break.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("big.bin");
    let offset: u64 = 2_500_000_000;
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(&data).unwrap();
        f.set_len(offset + 4096).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.write_all(&[1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    }
    let mut t = make::tensor_f32("far", &[4], &[0.0; 4]);
    t.raw_data = None;
    t.set_data_location(tensor_proto::DataLocation::External);
    t.external_data = vec![entry("location", "big.bin"), entry("offset", &offset.to_string()), entry("length", "16")];
    let graph = GraphProto {
        node: vec![make::node("Identity", &["far"], &["y"], vec![])],
        initializer: vec![t],
        output: vec![make::value_info("y", DataType::Float, &[4.into()])],
        ..Default::default()
    };
    let path = dir.path().join("big.onnx");
    onnx::save(&Model::new(make::model(graph, 18), dir.path()), &path).unwrap();
    let m = onnx::load(&path).unwrap();
    assert_eq!(m.tensor_f32(&m.graph().initializer[0]).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
    // Saving in place keeps the reference (no 2.5 GB copy) and the model stays equal.
    onnx::save(&m, &path).unwrap();
    assert_eq!(onnx::load(&path).unwrap().proto, m.proto);
}

// ---- bad input ----

fn load_err(path: &Path) -> String {
    match onnx::load(path) {
        Ok(_) => panic!("{} loaded, expected an error", path.display()),
        Err(e) => e.to_string(),
    }
}

fn assert_contains(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "error message {msg:?} should mention {p:?}");
    }
}

#[test]
fn truncated_and_non_protobuf_files_are_refused_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(repo("models/fixtures/mlp_loss.onnx")).unwrap();
    let cut = dir.path().join("cut.onnx");
    std::fs::write(&cut, &good[..good.len() / 2]).unwrap();
    assert_contains(&load_err(&cut), &["cut.onnx", "not a valid ONNX model"]);

    let text = dir.path().join("text.onnx");
    std::fs::write(&text, b"this is not a protobuf model at all, just text\n").unwrap();
    assert_contains(&load_err(&text), &["text.onnx", "not a valid ONNX model"]);

    let empty = dir.path().join("empty.onnx");
    std::fs::write(&empty, b"").unwrap();
    assert_contains(&load_err(&empty), &["empty.onnx", "empty"]);

    assert_contains(&load_err(&dir.path().join("absent.onnx")), &["absent.onnx", "No such file"]);
}

/// A one-initializer model whose tensor `w` points at `location` with the given layout.
fn external_model(dir: &Path, location: &str, offset: &str, length: &str) -> PathBuf {
    let mut t = make::tensor_f32("w", &[4], &[0.0; 4]);
    t.raw_data = None;
    t.set_data_location(tensor_proto::DataLocation::External);
    t.external_data = vec![entry("location", location), entry("offset", offset), entry("length", length)];
    let graph = GraphProto {
        node: vec![make::node("Identity", &["w"], &["y"], vec![])],
        initializer: vec![t],
        output: vec![make::value_info("y", DataType::Float, &[4.into()])],
        ..Default::default()
    };
    let path = dir.join("ext.onnx");
    use prost::Message;
    std::fs::write(&path, make::model(graph, 18).encode_to_vec()).unwrap();
    path
}

#[test]
fn unsafe_or_broken_external_data_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("w.bin"), [0u8; 16]).unwrap();
    std::fs::write(root.path().join("secret.bin"), [0u8; 16]).unwrap();
    std::os::unix::fs::symlink(root.path().join("secret.bin"), dir.join("link.bin")).unwrap();

    let ok = external_model(&dir, "w.bin", "0", "16");
    assert!(onnx::load(&ok).is_ok());

    let cases: &[(&str, &str, &str, &[&str])] = &[
        ("/etc/passwd", "0", "16", &["'w'", "/etc/passwd", "absolute"]),
        ("../secret.bin", "0", "16", &["'w'", "..", "refused"]),
        ("sub/../../secret.bin", "0", "16", &["'w'", ".."]),
        ("link.bin", "0", "16", &["'w'", "link.bin", "outside the model's folder"]),
        ("missing.bin", "0", "16", &["'w'", "missing.bin", "cannot be opened"]),
        ("w.bin", "32", "16", &["'w'", "offset", "past the end"]),
        ("w.bin", "8", "16", &["'w'", "length", "past the end"]),
        ("w.bin", "0", "8", &["'w'", "length", "needs 16"]),
        ("w.bin", "-4", "16", &["'w'", "offset", "not a non-negative integer"]),
    ];
    for (location, offset, length, want) in cases {
        let path = external_model(&dir, location, offset, length);
        let msg = load_err(&path);
        assert_contains(&msg, &["ext.onnx"]);
        assert_contains(&msg, want);
    }
}

fn graph_err(nodes: Vec<NodeProto>, outputs: &[&str]) -> String {
    let graph = GraphProto {
        node: nodes,
        input: vec![make::value_info("x", DataType::Float, &[2.into()])],
        output: outputs.iter().map(|o| make::value_info(o, DataType::Float, &[2.into()])).collect(),
        ..Default::default()
    };
    Graph::from_proto(&graph).map(|_| ()).unwrap_err().to_string()
}

#[test]
fn dangling_names_duplicates_and_cycles_are_refused_naming_the_node() {
    let msg = graph_err(vec![make::node("Add", &["x", "nowhere"], &["y"], vec![])], &["y"]);
    assert_contains(&msg, &["Add_y", "'nowhere'", "not produced"]);

    let msg = graph_err(vec![make::node("Relu", &["x"], &["y"], vec![])], &["z"]);
    assert_contains(&msg, &["output 'z'", "not produced"]);

    let msg =
        graph_err(vec![make::node("Relu", &["x"], &["y"], vec![]), make::node("Neg", &["x"], &["y"], vec![])], &["y"]);
    assert_contains(&msg, &["'y'", "produced twice", "Relu", "Neg"]);

    let msg = graph_err(
        vec![make::node("Add", &["x", "b"], &["a"], vec![]), make::node("Relu", &["a"], &["b"], vec![])],
        &["a"],
    );
    assert_contains(&msg, &["cycle", "Add_a", "Relu_b"]);
}

#[test]
fn ir_edits_keep_names_unique_and_dead_code_goes() {
    let graph = GraphProto {
        node: vec![make::node("Relu", &["x"], &["y"], vec![]), make::node("Neg", &["x"], &["unused"], vec![])],
        input: vec![make::value_info("x", DataType::Float, &[2.into()])],
        output: vec![make::value_info("y", DataType::Float, &[2.into()])],
        ..Default::default()
    };
    let mut g = Graph::from_proto(&graph).unwrap();
    g.set_pass(Some("test"));
    let y2 = g.add1("Neg", &["y"], vec![], "y").unwrap();
    assert_eq!(y2, "y_1", "a fresh name must not collide with 'y'");
    g.replace_uses("y", &y2, &[]).unwrap();
    assert_eq!(g.outputs()[0].name(), "y_1");
    assert_eq!(g.eliminate_dead(), 1, "only the unused Neg is dead");
    let out = g.to_proto();
    let ops: Vec<&str> = out.node.iter().map(|n| n.op_type()).collect();
    assert_eq!(ops, ["Relu", "Neg"]);
    assert_eq!(out.node[1].metadata_props[0].value(), "test", "added nodes carry their pass label");
    assert!(g.add1("Relu", &["nowhere"], vec![], "z").is_err());
    assert_eq!(g.op_count(), 2, "a failed add leaves nothing behind");
}
