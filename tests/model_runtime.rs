//! The model runtime: loading, typed errors, batched inference, tract vs the
//! PyTorch reference outputs, annotation and the concept-space vector.
//!
//! Tests that need the model look in `$VITRINE_MODEL_DIR`, else `models/`,
//! and skip (with a message) when the bundled ONNX file is not there.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vitrine::{Model, ModelError, PreparedImage, BUNDLED_ONNX, MANIFEST_FILE};

/// The bundled model's input, CHW.
const INPUT: [usize; 3] = [3, PreparedImage::HEIGHT, PreparedImage::WIDTH];

fn model_dir() -> Option<PathBuf> {
    let dir = Model::bundled_dir();
    if dir.join(BUNDLED_ONNX).is_file() && dir.join(MANIFEST_FILE).is_file() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: no model at {} (set VITRINE_MODEL_DIR or commit models/{BUNDLED_ONNX})",
            dir.display()
        );
        None
    }
}

/// The file the committed manifest loads is [`BUNDLED_ONNX`], the name the
/// model tests look for before they run: a renamed model would otherwise
/// have them all skip.
#[test]
fn the_committed_manifest_names_the_bundled_file() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models");
    let raw: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(MANIFEST_FILE)).unwrap()).unwrap();
    assert_eq!(raw["onnx"], BUNDLED_ONNX);
    assert!(dir.join(BUNDLED_ONNX).is_file());
}

fn model() -> Option<Arc<Model>> {
    model_dir()?;
    Some(Model::bundled().expect("the model in the model dir loads"))
}

/// A minimal manifest in the export's format (no ONNX needed to parse it).
fn tiny_manifest(shape: [usize; 3]) -> String {
    serde_json::json!({
        "name": "tiny",
        "onnx": "tiny.onnx",
        "input": {"name": "input", "shape": ["batch", shape[0], shape[1], shape[2]]},
        "taxonomy": {
            "categories": ["a", "b"],
            "groups": [{"name": "colour", "start": 0, "end": 2, "exclusive": true, "tags": ["red", "blue"]}]
        },
        "tag_names": ["colour.red", "colour.blue"],
        "tag_thresholds": {"colour.red": {"threshold": 0.4}},
        "concept_table": {"names": ["category.a"], "dim": 2, "vectors": [[1.0, 0.0]]}
    })
    .to_string()
}

/// Reads a little-endian float32 C-order `.npy` file: (shape, values).
fn read_npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(
        &bytes[..6],
        b"\x93NUMPY",
        "{} is not an npy file",
        path.display()
    );
    let (hlen, start) = if bytes[6] == 1 {
        (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
    } else {
        (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        )
    };
    let header = std::str::from_utf8(&bytes[start..start + hlen]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    assert!(header.contains("'fortran_order': False"), "{header}");
    let shape_str = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = shape_str
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let data: Vec<f32> = bytes[start + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(data.len(), shape.iter().product::<usize>());
    (shape, data)
}

#[test]
fn missing_model_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    match Model::from_dir(dir.path()) {
        Err(ModelError::Missing { path }) => assert_eq!(path, dir.path().join(MANIFEST_FILE)),
        other => panic!("expected Missing, got {other:?}"),
    }
    std::fs::write(dir.path().join(MANIFEST_FILE), tiny_manifest(INPUT)).unwrap();
    match Model::from_dir(dir.path()) {
        Err(ModelError::Missing { path }) => assert_eq!(path, dir.path().join("tiny.onnx")),
        other => panic!("expected Missing, got {other:?}"),
    }
    let e = Model::from_dir(dir.path()).unwrap_err();
    assert!(e.to_string().contains("tiny.onnx"), "{e}");
    // The caller's to fix, wherever it surfaces.
    assert!(e.is_user_error());
    assert!(vitrine::IngestError::from(e).is_user_error());
    // A device named as the model file is refused, not read without end.
    match Model::load("/dev/zero", dir.path().join(MANIFEST_FILE)) {
        Err(ModelError::Io { path, source }) => {
            assert_eq!(path, Path::new("/dev/zero"));
            assert_eq!(source.kind(), std::io::ErrorKind::InvalidInput);
        }
        other => panic!("expected Io, got {other:?}"),
    }
}

#[test]
fn corrupt_onnx_is_a_typed_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(MANIFEST_FILE), tiny_manifest(INPUT)).unwrap();
    std::fs::write(
        dir.path().join("tiny.onnx"),
        b"this is not a protobuf model",
    )
    .unwrap();
    match Model::from_dir(dir.path()) {
        Err(ModelError::Corrupt { path, .. }) => assert_eq!(path, dir.path().join("tiny.onnx")),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(matches!(
        Model::from_bytes(b"\x00\x01garbage", tiny_manifest(INPUT).as_bytes()),
        Err(ModelError::Corrupt { .. })
    ));
}

/// A flipped byte in the weights: refused by the manifest's SHA-256, not
/// loaded as another model (whose fingerprint would ask for a re-embed).
#[test]
fn a_damaged_onnx_file_is_refused_by_its_checksum() {
    let dir = Model::bundled_dir();
    let manifest = std::fs::read(dir.join(MANIFEST_FILE)).unwrap();
    let raw: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let mut onnx = std::fs::read(dir.join(raw["onnx"].as_str().unwrap())).unwrap();
    let at = onnx.len() / 2;
    onnx[at] ^= 0x01;
    match Model::from_bytes(&onnx, &manifest) {
        Err(ModelError::Corrupt { reason, .. }) => assert!(reason.contains("SHA-256"), "{reason}"),
        other => panic!(
            "expected Corrupt, got {:?}",
            other.map(|m| m.fingerprint().to_string())
        ),
    }
    // A tag label that would break the stored tag list, and a threshold
    // for no tag.
    for (field, value) in [
        ("/taxonomy/groups/0/tags/1", serde_json::json!("blue,green")),
        (
            "/tag_thresholds/colour.pink",
            serde_json::json!({"threshold": 0.3}),
        ),
    ] {
        let mut m: serde_json::Value = serde_json::from_str(&tiny_manifest(INPUT)).unwrap();
        if field.starts_with("/tag_thresholds") {
            m["tag_thresholds"]["colour.pink"] = value.clone();
        } else {
            *m.pointer_mut(field).unwrap() = value.clone();
            m["tag_names"] = serde_json::json!(["colour.red", "colour.blue,green"]);
        }
        let r = Model::from_bytes(b"", m.to_string().as_bytes());
        assert!(
            matches!(&r, Err(ModelError::Manifest { .. })),
            "{field}: {r:?}"
        );
    }
    // A manifest stating a preparation other than the engine's (ImageNet
    // normalisation, a wider margin) is refused, not fed wrong inputs.
    let bundled: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    for (pointer, value) in [
        (
            "/normalisation/std",
            serde_json::json!([0.229, 0.224, 0.225]),
        ),
        ("/prep/margin_frac", serde_json::json!(0.1)),
        ("/prep/area_shrink_min", serde_json::json!(8.0)),
        // The right three values with something else among them.
        ("/prep/mean", serde_json::json!([0.5, "x", 0.5, 0.5])),
        // A model trained on BGR, or on another type, stated as such.
        ("/input/channel_order", serde_json::json!("BGR")),
        ("/prep/channel_order", serde_json::json!("BGR")),
        ("/input/dtype", serde_json::json!("float16")),
    ] {
        let mut m = bundled.clone();
        *m.pointer_mut(pointer).unwrap() = value;
        match Model::from_bytes(b"", m.to_string().as_bytes()) {
            Err(ModelError::Manifest { reason, .. }) => {
                assert!(reason.contains(&pointer[1..].replace('/', ".")), "{reason}")
            }
            other => panic!(
                "{pointer}: {:?}",
                other.map(|m| m.fingerprint().to_string())
            ),
        }
    }
}

#[test]
fn bad_manifests_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(MANIFEST_FILE);
    std::fs::write(&path, b"{ not json").unwrap();
    match Model::from_dir(dir.path()) {
        Err(ModelError::Manifest { path: p, .. }) => assert_eq!(p, path),
        other => panic!("expected Manifest, got {other:?}"),
    }
    // Groups that do not cover the tags.
    let mut m: serde_json::Value = serde_json::from_str(&tiny_manifest(INPUT)).unwrap();
    m["tag_names"] = serde_json::json!(["colour.red", "colour.blue", "colour.green"]);
    assert!(matches!(
        Model::from_bytes(b"", m.to_string().as_bytes()),
        Err(ModelError::Manifest { .. })
    ));
    // Names queries could not tell apart, a reserved group, a NaN threshold.
    for (field, value) in [
        (
            "/taxonomy/categories",
            serde_json::json!(["Navy Blue", "navy-blue"]),
        ),
        ("/taxonomy/groups/0/name", serde_json::json!("category")),
        // The query lexer reads 1e5 as a number: `1e5.x` could name nothing.
        ("/taxonomy/groups/0/name", serde_json::json!("1e5")),
        ("/taxonomy/groups/0/tags", serde_json::json!(["red", "Red"])),
        (
            "/tag_thresholds/colour.red/threshold",
            serde_json::json!(1.5),
        ),
        // A model file outside the manifest's folder (`/dev/zero` was
        // read without end).
        ("/onnx", serde_json::json!("/dev/zero")),
        ("/onnx", serde_json::json!("../tiny.onnx")),
        ("/onnx", serde_json::json!("")),
        // A checksum the file could never match: the file was blamed.
        ("/onnx_sha256", serde_json::json!("sha256:c853fb2b")),
    ] {
        let mut m: serde_json::Value = serde_json::from_str(&tiny_manifest(INPUT)).unwrap();
        if field == "/onnx_sha256" {
            m["onnx_sha256"] = value.clone();
        }
        *m.pointer_mut(field).unwrap() = value.clone();
        if field.ends_with("/name") {
            let g = value.as_str().unwrap();
            m["tag_names"] = serde_json::json!([format!("{g}.red"), format!("{g}.blue")]);
            m["tag_thresholds"] = serde_json::json!({});
        }
        if field.ends_with("/tags") {
            m["tag_names"] = serde_json::json!(["colour.red", "colour.Red"]);
        }
        let r = Model::from_bytes(b"", m.to_string().as_bytes());
        assert!(
            matches!(&r, Err(ModelError::Manifest { .. })),
            "{field} = {value}: {r:?}"
        );
    }
    // A missing field.
    let mut m: serde_json::Value = serde_json::from_str(&tiny_manifest(INPUT)).unwrap();
    m.as_object_mut().unwrap().remove("taxonomy");
    let e = Model::from_bytes(b"", m.to_string().as_bytes()).unwrap_err();
    assert!(e.to_string().contains("taxonomy"), "{e}");
    // A threshold given twice (serde kept the last one).
    let text = tiny_manifest(INPUT).replace(
        r#""colour.red":{"threshold":0.4}"#,
        r#""colour.red":{"threshold":0.4},"colour.red":{"threshold":0.9}"#,
    );
    assert!(text.contains("0.9"));
    let e = Model::from_bytes(b"", text.as_bytes()).unwrap_err();
    assert!(e.to_string().contains("'colour.red' is given twice"), "{e}");
    // A hand edit of the wrong type says where it is.
    let mut m: serde_json::Value = serde_json::from_str(&tiny_manifest(INPUT)).unwrap();
    m["tag_thresholds"]["colour.red"] = serde_json::json!(0.4);
    let pretty = serde_json::to_string_pretty(&m).unwrap();
    let e = Model::from_bytes(b"", pretty.as_bytes()).unwrap_err();
    assert!(e.to_string().contains("line"), "{e}");
}

#[test]
fn wrong_input_shape_is_a_typed_error() {
    // A manifest of another input size is the model's fault, and names it.
    match Model::from_bytes(b"", tiny_manifest([3, 64, 64]).as_bytes()) {
        Err(e @ ModelError::ManifestMismatch(_)) => {
            let m = e.to_string();
            assert!(m.contains("<bytes>") && m.contains("[3, 64, 64]"), "{m}");
            assert!(m.contains(&format!("{INPUT:?}")), "{m}");
            assert!(e.is_user_error());
        }
        other => panic!("expected ManifestMismatch, got {other:?}"),
    }
    let Some(model) = model() else { return };
    assert!(matches!(
        model.infer_tensor(&[0.0; 100], 1),
        Err(ref e @ ModelError::InputShape { .. }) if e.is_user_error()
    ));
    assert!(model.infer_tensor(&[], 0).unwrap().is_empty());
    assert!(model.infer(&[]).unwrap().is_empty());
}

#[test]
fn manifest_that_disagrees_with_the_graph_is_a_typed_error() {
    let Some(dir) = model_dir() else { return };
    let onnx = std::fs::read(dir.join(BUNDLED_ONNX)).unwrap();
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(MANIFEST_FILE)).unwrap()).unwrap();
    let cats = m["taxonomy"]["categories"].as_array_mut().unwrap();
    cats.pop();
    match Model::from_bytes(&onnx, m.to_string().as_bytes()) {
        Err(ModelError::ManifestMismatch(reason)) => {
            assert!(reason.contains("categories"), "{reason}")
        }
        other => panic!("expected ManifestMismatch, got {other:?}"),
    }
    // From files (another model version's manifest beside it, say): the
    // message names the ONNX file.
    let tmp = tempfile::tempdir().unwrap();
    let onnx_path = tmp.path().join("model.onnx");
    std::fs::write(&onnx_path, &onnx).unwrap();
    std::fs::write(tmp.path().join("m.json"), m.to_string()).unwrap();
    let e = Model::load(&onnx_path, tmp.path().join("m.json")).unwrap_err();
    assert!(e.to_string().contains(onnx_path.to_str().unwrap()), "{e}");
}

/// What a hand edit may leave: a byte-order mark (Windows editors) and a
/// `./` before the file name. Both name the same model.
#[test]
fn a_hand_edited_manifest_with_a_bom_and_a_dot_path_loads() {
    let dir = Model::bundled_dir();
    let manifest = std::fs::read(dir.join(MANIFEST_FILE)).unwrap();
    let mut raw: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let name = raw["onnx"].as_str().unwrap().to_string();
    let onnx = std::fs::read(dir.join(&name)).unwrap();
    raw["onnx"] = serde_json::json!(format!("./{name}"));
    let mut edited = b"\xEF\xBB\xBF".to_vec();
    edited.extend(serde_json::to_vec_pretty(&raw).unwrap());
    let model = Model::from_bytes(&onnx, &edited).unwrap();
    let bundled = Model::from_dir(&dir).unwrap();
    assert_eq!(model.fingerprint(), bundled.fingerprint());
    // Still refused: a path of only `.`, or one that climbs out.
    for onnx_path in [".", "./../x.onnx", "./"] {
        raw["onnx"] = serde_json::json!(onnx_path);
        let r = Model::from_bytes(&onnx, raw.to_string().as_bytes());
        assert!(
            matches!(&r, Err(ModelError::Manifest { .. })),
            "{onnx_path}: {:?}",
            r.map(|m| m.fingerprint().to_string())
        );
    }
}

/// The bundled graph edited into what other exporters write (byte input
/// with the normalisation inside, a fixed batch, another rank, weights in
/// a separate file): each is refused with its reason, not as a "corrupt"
/// file or, worse, run on inputs it does not expect.
#[test]
fn graphs_the_engine_cannot_feed_are_refused_with_the_reason() {
    use prost::Message;
    use tract_onnx::pb;
    let Some(dir) = model_dir() else { return };
    let onnx = std::fs::read(dir.join(BUNDLED_ONNX)).unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(MANIFEST_FILE)).unwrap()).unwrap();
    // The edited graphs are other files.
    manifest.as_object_mut().unwrap().remove("onnx_sha256");
    let manifest = manifest.to_string();
    let edited = |edit: &dyn Fn(&mut pb::GraphProto)| {
        let mut m = pb::ModelProto::decode(&onnx[..]).unwrap();
        edit(m.graph.as_mut().unwrap());
        Model::from_bytes(&m.encode_to_vec(), manifest.as_bytes())
    };
    fn input(g: &mut pb::GraphProto) -> &mut pb::type_proto::Tensor {
        let i = g.input.iter_mut().find(|i| i.name == "input").unwrap();
        let pb::type_proto::Value::TensorType(t) =
            i.r#type.as_mut().unwrap().value.as_mut().unwrap();
        t
    }
    // Decoded and encoded again unchanged, it loads: the edits below are
    // what is refused.
    edited(&|_| {}).unwrap();
    let refused = |what: &str, edit: &dyn Fn(&mut pb::GraphProto), says: &str| match edited(edit) {
        Err(ModelError::ManifestMismatch(reason)) => {
            assert!(reason.contains(says), "{what}: {reason}")
        }
        other => panic!("{what}: expected ManifestMismatch, got {other:?}"),
    };
    let uint8 = pb::tensor_proto::DataType::Uint8 as i32;
    refused("uint8 input", &|g| input(g).elem_type = uint8, "float32");
    // A batch fixed at export (a dummy input of 8) runs one image per call
    // when nothing in the graph holds the 8.
    let fixed = edited(&|g| {
        let dims = &mut input(g).shape.as_mut().unwrap().dim;
        dims[0].value = Some(pb::tensor_shape_proto::dimension::Value::DimValue(8));
    })
    .unwrap();
    let bundled = model().unwrap();
    let x = vec![0.25f32; INPUT.iter().product()];
    let (a, b) = (
        fixed.infer_tensor(&x, 1).unwrap(),
        bundled.infer_tensor(&x, 1).unwrap(),
    );
    assert_eq!(a[0].embedding, b[0].embedding);
    refused(
        "rank 3",
        &|g| {
            input(g).shape.as_mut().unwrap().dim.remove(0);
        },
        "rank 3",
    );
    refused(
        "external weights",
        &|g| {
            let w = &mut g.initializer[0];
            w.raw_data.clear();
            w.data_location = Some(pb::tensor_proto::DataLocation::External as i32);
            w.external_data = vec![pb::StringStringEntryProto {
                key: "location".into(),
                value: "weights.data".into(),
            }];
        },
        "external data",
    );
}

#[test]
fn loads_with_the_contract_shapes() {
    let Some(model) = model() else { return };
    let m = model.manifest();
    assert_eq!(model.embedding_dim(), 128);
    assert!(!model.fingerprint().is_empty());
    let blocks = model.concept_blocks();
    assert_eq!(blocks[0].name, "visual");
    assert_eq!(blocks[1].name, "category");
    assert_eq!(blocks.len(), 2 + m.groups().len());
    assert_eq!(
        model.concept_space_dim(),
        128 + m.categories().len() + m.tag_names().len()
    );
    let [e, c] = model.vector_spaces();
    assert_eq!((e.name.as_str(), e.dim), ("embedding", 128));
    assert_eq!(c.name, "concept");
    assert_eq!(c.dim, model.concept_space_dim());
    // The manifest records the augmentation the shipped run used.
    let raw: serde_json::Value =
        serde_json::from_slice(&std::fs::read(Model::bundled_dir().join(MANIFEST_FILE)).unwrap())
            .unwrap();
    assert_eq!(
        raw["training"]["augmentation"]["erase"],
        raw["training"]["args"]["erase"]
    );
    // Same files, same fingerprint.
    let again = Model::from_dir(Model::bundled_dir()).unwrap();
    assert_eq!(again.fingerprint(), model.fingerprint());
}

#[test]
fn tract_matches_the_pytorch_reference_outputs() {
    let Some(dir) = model_dir() else { return };
    let json_path = dir.join("fixtures/reference_outputs.json");
    let input_path = dir.join("fixtures/input.npy");
    if !json_path.is_file() || !input_path.is_file() {
        eprintln!("SKIPPED: no fixtures in {}", dir.join("fixtures").display());
        return;
    }
    let model = model().unwrap();
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    let tol = reference["tolerance"].as_f64().unwrap_or(1e-4) as f32;
    let (shape, input) = read_npy_f32(&input_path);
    assert_eq!(&shape[1..], &INPUT);
    let n = shape[0];
    let outs = model.infer_tensor(&input, n).unwrap();
    assert_eq!(outs.len(), n);
    let mut worst = 0.0f32;
    for (name, get) in [
        (
            "embedding",
            (|o: &vitrine::ModelOutput| o.embedding.clone()) as fn(&_) -> Vec<f32>,
        ),
        ("category_logits", |o| o.category_logits.clone()),
        ("tag_logits", |o| o.tag_logits.clone()),
        ("concept", |o| o.concept.clone()),
    ] {
        let rows = reference["outputs"][name].as_array().unwrap();
        assert_eq!(rows.len(), n, "{name}");
        for (i, row) in rows.iter().enumerate() {
            let want: Vec<f32> = row
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let got = get(&outs[i]);
            assert_eq!(got.len(), want.len(), "{name}[{i}]");
            for (g, w) in got.iter().zip(&want) {
                let d = (g - w).abs();
                worst = worst.max(d);
                assert!(
                    d <= tol,
                    "{name}[{i}]: tract {g} vs reference {w} (tolerance {tol})"
                );
            }
        }
    }
    eprintln!("tract vs PyTorch: max abs difference {worst:e} over {n} images");
}

#[test]
fn batches_agree_with_single_images() {
    let Some(dir) = model_dir() else { return };
    let model = model().unwrap();
    let input_path = dir.join("fixtures/input.npy");
    let per = 3 * PreparedImage::HEIGHT * PreparedImage::WIDTH;
    let input = if input_path.is_file() {
        read_npy_f32(&input_path).1
    } else {
        (0..3 * per)
            .map(|i| ((i % 97) as f32 / 48.0) - 1.0)
            .collect()
    };
    let n = input.len() / per;
    let batched = model.infer_tensor(&input, n).unwrap();
    for i in 0..n {
        let single = model
            .infer_tensor(&input[i * per..(i + 1) * per], 1)
            .unwrap();
        for (a, b) in single[0].embedding.iter().zip(&batched[i].embedding) {
            assert!((a - b).abs() < 1e-4, "image {i}: {a} vs {b}");
        }
        for (a, b) in single[0]
            .category_logits
            .iter()
            .zip(&batched[i].category_logits)
        {
            assert!((a - b).abs() < 1e-3, "image {i}: {a} vs {b}");
        }
    }
}

#[test]
fn outputs_annotation_and_concept_vector_are_well_formed() {
    let Some(model) = model() else { return };
    let per = 3 * PreparedImage::HEIGHT * PreparedImage::WIDTH;
    // A white canvas, a mid-grey one and a patterned one.
    let mut input = vec![2.0f32; per];
    input.extend(vec![0.0f32; per]);
    input.extend((0..per).map(|i| if (i / 7) % 2 == 0 { 2.0 } else { -2.0 }));
    let outs = model.infer_tensor(&input, 3).unwrap();
    let m = model.manifest();
    for out in &outs {
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm(&out.embedding) - 1.0).abs() < 1e-4);
        assert!((norm(&out.concept) - 1.0).abs() < 1e-4);
        assert!((out.category_probs.iter().sum::<f32>() - 1.0).abs() < 1e-4);
        assert!(out.tag_scores.iter().all(|s| (0.0..=1.0).contains(s)));

        let z = model.concept_vector(out);
        assert_eq!(z.len(), model.concept_space_dim());
        for b in model.concept_blocks() {
            assert!(
                (norm(&z[b.range.clone()]) - 1.0).abs() < 1e-4,
                "block {}",
                b.name
            );
        }
        // Self-similarity in concept space = number of blocks.
        let dot: f32 = z.iter().map(|x| x * x).sum();
        assert!((dot - model.concept_blocks().len() as f32).abs() < 1e-3);

        let ann = model.annotation(out, 5);
        assert_eq!(ann.category.len(), 5.min(m.categories().len()));
        assert!(ann.category.windows(2).all(|w| w[0].p >= w[1].p));
        assert!(ann.tags.windows(2).all(|w| w[0].score >= w[1].score));
        for g in m.groups().iter().filter(|g| g.exclusive) {
            let prefix = format!("{}.", g.name);
            let n = ann
                .tags
                .iter()
                .filter(|t| t.tag.starts_with(&prefix))
                .count();
            assert!(n <= 1, "exclusive group {} kept {n} tags", g.name);
        }
        for t in &ann.tags {
            let i = m.tag_names().iter().position(|n| *n == t.tag).unwrap();
            assert!(t.score >= m.tag_thresholds()[i]);
        }
        // A flat category distribution is reported as uncertain; a sure one is not.
        let n = out.category_probs.len();
        let mut flat = out.clone();
        flat.category_probs = vec![1.0 / n as f32; n];
        assert!(model.annotation(&flat, 1).category[0]
            .why
            .contains("uncertain"));
        let mut sure = out.clone();
        sure.category_probs = (0..n).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect();
        assert!(!model.annotation(&sure, 1).category[0]
            .why
            .contains("uncertain"));
    }
}
