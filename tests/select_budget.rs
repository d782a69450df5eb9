//! Budget accounting: the selected parameters never exceed the budget and miss it by
//! less than one unit, in every scope and unit; count budgets are exact; ties are
//! broken by layer order, then row; the same seed gives the same random selection.

use neft::analyze::{analyze_structure, find_layers};
use neft::compile::Unit;
use neft::ir::Graph;
use neft::onnx;
use neft::profile::Statistic;
use neft::select::{
    allocate, build_groups, select, Budget, Evidence, Group, Limit, Scope, SelectOptions, Selection, Strategy, Targets,
};
use std::path::{Path, PathBuf};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn llama() -> onnx::Model {
    onnx::load(repo("models/fixtures/tiny_llama.onnx")).unwrap()
}

fn evidence(seed: u64) -> Evidence<'static> {
    Evidence {
        profile: None,
        statistic: Statistic::MeanAbs,
        data: None,
        loss: neft::passes::append_loss::LossSpec::Auto,
        reference: None,
        seed,
    }
}

fn options(budget: &str, scope: Scope, unit: Unit, targets: &str) -> SelectOptions {
    SelectOptions {
        strategy: Strategy::Random,
        reversed_of: Strategy::Cosine,
        budget: budget.parse().unwrap(),
        scope,
        targets: targets.parse().unwrap(),
        unit,
    }
}

fn groups(model: &onnx::Model, targets: &str, unit: Unit) -> Vec<Group> {
    let graph = Graph::from_proto(model.graph()).unwrap();
    let layers = find_layers(&graph);
    let mlps = analyze_structure(&graph, &layers).mlps;
    build_groups(&layers, &mlps, &targets.parse().unwrap(), unit)
}

/// The parameters the neuron set selects, counted from the file itself.
fn counted_params(sel: &Selection, groups: &[Group]) -> u64 {
    groups
        .iter()
        .flat_map(|g| g.members.iter())
        .map(|m| sel.neurons.layers.get(&m.weight).map_or(0, |l| l.rows.len() as u64 * m.row_params))
        .sum()
}

#[test]
fn percentage_budgets_are_never_exceeded_and_missed_by_less_than_one_unit() {
    let model = llama();
    for unit in [Unit::Neuron, Unit::MlpUnit] {
        for targets in ["mlp", "all", "attn"] {
            let gs = groups(&model, targets, unit);
            let total: u64 = gs.iter().map(Group::params).sum();
            for scope in [Scope::Global, Scope::PerLayer, Scope::Normalized] {
                for pct in ["0.5%", "3%", "6%", "17.3%", "50%", "100%"] {
                    let limit =
                        (pct.trim_end_matches('%').parse::<f64>().unwrap() / 100.0 * total as f64).floor() as u64;
                    let case = format!("{unit:?} {targets} {scope:?} {pct}");
                    let result = select(&model, &options(pct, scope, unit, targets), &evidence(7));
                    if limit < gs.iter().map(Group::unit_params).min().unwrap() {
                        let e = result.err().map(|e| e.to_string()).unwrap_or_default();
                        assert!(e.contains("less than one unit"), "{case}: {e}");
                        continue;
                    }
                    let sel = result.unwrap();
                    let got = counted_params(&sel, &gs);
                    assert_eq!(got, sel.summary.params_selected, "{case}");
                    assert_eq!((sel.summary.limit, sel.summary.params_targeted), (limit, total), "{case}");
                    assert!(got <= limit, "{case}: {got} selected, budget {limit}");
                    // Whatever is left is smaller than every unit not taken.
                    let untaken = gs
                        .iter()
                        .filter(|g| sel.neurons.layers.get(&g.members[0].weight).map_or(0, |l| l.rows.len()) < g.units)
                        .map(Group::unit_params)
                        .min();
                    if let Some(smallest) = untaken {
                        assert!(limit - got < smallest, "{case}: {} left, a unit costs {smallest}", limit - got);
                    }
                }
            }
        }
    }
}

#[test]
fn count_budgets_select_exactly_that_many_units() {
    let model = llama();
    for unit in [Unit::Neuron, Unit::MlpUnit] {
        for scope in [Scope::Global, Scope::PerLayer, Scope::Normalized] {
            for n in [1u64, 7, 50, 128] {
                let sel = select(&model, &options(&n.to_string(), scope, unit, "mlp"), &evidence(1)).unwrap();
                assert_eq!(sel.summary.units_selected, n, "{unit:?} {scope:?} {n}");
                let per_unit_weights = if unit == Unit::MlpUnit { 3 } else { 1 };
                assert_eq!(sel.neurons.count() as u64, n * per_unit_weights, "{unit:?} {scope:?} {n}");
            }
        }
    }
}

#[test]
fn per_layer_scope_gives_every_layer_its_share() {
    let model = llama();
    let sel = select(&model, &options("25%", Scope::PerLayer, Unit::Neuron, "mlp"), &evidence(3)).unwrap();
    // gate and up: 64 neurons each, down: 32; a quarter of each.
    for s in sel.shares.iter().filter(|s| s.targeted) {
        assert_eq!(s.rows_selected * 4, s.rows, "{}", s.weight);
    }
    assert!(sel.shares.iter().filter(|s| !s.targeted).all(|s| s.rows_selected == 0));
}

#[test]
fn normalized_scope_ranks_units_by_how_far_they_stand_out_in_their_layer() {
    let model = llama();
    let gs = groups(&model, "mlp", Unit::Neuron);
    // Group 0's scores are ten times larger overall; one unit of each group stands out.
    let mut scores: Vec<Vec<f64>> = gs.iter().map(|g| vec![0.0; g.units]).collect();
    scores[0] = vec![10.0; gs[0].units];
    scores[0][3] = 30.0;
    scores[1] = vec![1.0; gs[1].units];
    scores[1][5] = 5.0;
    let limit = Limit::of(Budget::Count(2), &gs).unwrap();
    let global = allocate(&gs, &scores, limit, Scope::Global);
    assert_eq!((global[0].clone(), global[1].clone()), (vec![0, 3], vec![]), "global: the larger scale wins");
    let normalized = allocate(&gs, &scores, limit, Scope::Normalized);
    assert_eq!((normalized[0].clone(), normalized[1].clone()), (vec![3], vec![5]), "each layer's standout");
    assert_eq!("normalized".parse::<Scope>().unwrap(), Scope::Normalized);
}

#[test]
fn ties_are_broken_by_layer_order_then_row() {
    let model = llama();
    let gs = groups(&model, "mlp", Unit::Neuron);
    let flat: Vec<Vec<f64>> = gs.iter().map(|g| vec![1.0; g.units]).collect();
    let limit = Limit::of(Budget::Count(70), &gs).unwrap();
    let picked = allocate(&gs, &flat, limit, Scope::Global);
    // Group 0 (block 0 gate, 64 rows) fills first, then rows 0..6 of group 1.
    assert_eq!(picked[0], (0..64).collect::<Vec<_>>());
    assert_eq!(picked[1], (0..6).collect::<Vec<_>>());
    assert!(picked[2..].iter().all(Vec::is_empty));
    // -0.0 and 0.0 tie; NaN ranks last.
    let mut scores: Vec<Vec<f64>> = gs.iter().map(|g| vec![0.0; g.units]).collect();
    scores[0][0] = f64::NAN;
    scores[0][1] = -0.0;
    scores[3][5] = 2.0;
    let picked = allocate(&gs, &scores, Limit::of(Budget::Count(3), &gs).unwrap(), Scope::Global);
    assert_eq!((&picked[0], &picked[3]), (&vec![1, 2], &vec![5]));
    for _ in 0..3 {
        assert_eq!(allocate(&gs, &scores, Limit::of(Budget::Count(3), &gs).unwrap(), Scope::Global), picked);
    }
}

#[test]
fn the_same_seed_gives_the_same_random_selection() {
    let model = llama();
    let opts = options("6%", Scope::Global, Unit::Neuron, "all");
    let a = select(&model, &opts, &evidence(42)).unwrap().neurons;
    let b = select(&model, &opts, &evidence(42)).unwrap().neurons;
    let c = select(&model, &opts, &evidence(43)).unwrap().neurons;
    assert_eq!(a, b);
    assert_ne!(a, c, "another seed should pick other neurons");
    // Random neurons spread over the layers rather than filling one.
    assert!(a.layers.len() >= 5, "{:?}", a.layers.keys());
}

#[test]
fn bad_budgets_and_targets_get_clear_errors() {
    for (text, want) in [
        ("0", "nothing would be selected"),
        ("0%", "more than 0%"),
        ("101%", "at most 100%"),
        ("-3%", "more than 0%"),
        ("6.5", "percentage"),
        ("lots", "percentage"),
    ] {
        let err = text.parse::<Budget>().unwrap_err();
        assert!(err.contains(want), "{text}: {err}");
    }
    let model = llama();
    let err = |opts: SelectOptions| format!("{:#}", select(&model, &opts, &evidence(0)).unwrap_err());
    let e = err(options("100000", Scope::Global, Unit::Neuron, "mlp"));
    assert!(e.contains("only 320 units"), "{e}");
    let e = err(options("0.001%", Scope::Global, Unit::Neuron, "mlp"));
    assert!(e.contains("less than one unit"), "{e}");
    let e = err(options("6%", Scope::Global, Unit::Neuron, "^nothing$"));
    assert!(e.contains("matches no trainable layer") && e.contains("block 0 / attn.q"), "{e}");
    let e = "([".parse::<Targets>().unwrap_err();
    assert!(e.contains("regular expression"), "{e}");
}
