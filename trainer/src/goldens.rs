//! Test access to the reference values in `shared/testdata/ssl-goldens/`: one safetensors
//! file per case (`in.*` inputs, `out.*` expected outputs, `grad.*` gradients of the loss,
//! `weight.*` timm state dicts in f16) and `manifest.json` with each case's tolerance.
//!
//! Tests compare with [`Golden::assert_close`], which applies the manifest's
//! `|actual - expected| <= abs + rel * |expected|` element by element and names the worst
//! element when it fails.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use safetensors::{Dtype, SafeTensors};

/// Where the golden files sit, beside the checkout (`../shared`).
pub(crate) fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/ssl-goldens")
}

/// One case: its tensors (as f32 or i64 host vectors) and tolerance.
#[derive(Debug)]
pub(crate) struct Golden {
    /// The case name (`simclr_ntxent_t0.5`).
    pub(crate) case: String,
    /// `manifest.json`'s `params` (hyper-parameters), when present.
    pub(crate) params: serde_json::Value,
    /// Absolute tolerance.
    pub(crate) abs: f64,
    /// Relative tolerance.
    pub(crate) rel: f64,
    tensors: BTreeMap<String, (Vec<usize>, Values)>,
}

#[derive(Debug)]
enum Values {
    Float(Vec<f32>),
    Int(Vec<i64>),
}

fn f32s(bytes: &[u8], dtype: Dtype) -> Option<Vec<f32>> {
    let chunks2 = || bytes.chunks_exact(2).map(|b| [b[0], b[1]]);
    Some(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => chunks2()
            .map(|b| half::f16::from_le_bytes(b).to_f32())
            .collect(),
        Dtype::BF16 => chunks2()
            .map(|b| half::bf16::from_le_bytes(b).to_f32())
            .collect(),
        _ => return None,
    })
}

fn i64s(bytes: &[u8], dtype: Dtype) -> Option<Vec<i64>> {
    Some(match dtype {
        Dtype::I64 => bytes
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect(),
        Dtype::U8 => bytes.iter().map(|&b| i64::from(b)).collect(),
        Dtype::I32 => bytes
            .chunks_exact(4)
            .map(|b| i64::from(i32::from_le_bytes(b.try_into().expect("4 bytes"))))
            .collect(),
        _ => return None,
    })
}

impl Golden {
    /// Loads `case` (the file stem), panicking with the path when it is missing.
    pub(crate) fn load(case: &str) -> Self {
        let dir = dir();
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.join("manifest.json"))
                .unwrap_or_else(|e| panic!("{}: {e}", dir.join("manifest.json").display())),
        )
        .expect("manifest.json is JSON");
        let entry = &manifest["cases"][case];
        assert!(entry.is_object(), "no case `{case}` in manifest.json");
        let tol = &entry["tolerance"];
        let path = dir.join(format!("{case}.safetensors"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let st = SafeTensors::deserialize(&bytes).expect("golden file is safetensors");
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                let values = match f32s(view.data(), view.dtype()) {
                    Some(v) => Values::Float(v),
                    None => Values::Int(
                        i64s(view.data(), view.dtype())
                            .unwrap_or_else(|| panic!("{name}: dtype {:?}", view.dtype())),
                    ),
                };
                (name, (view.shape().to_vec(), values))
            })
            .collect();
        Self {
            case: case.to_string(),
            params: entry["params"].clone(),
            abs: tol["abs"].as_f64().expect("tolerance.abs"),
            rel: tol["rel"].as_f64().expect("tolerance.rel"),
            tensors,
        }
    }

    /// A float hyper-parameter from `params`.
    pub(crate) fn param(&self, name: &str) -> f64 {
        self.params[name]
            .as_f64()
            .unwrap_or_else(|| panic!("{}: no numeric param `{name}`", self.case))
    }

    /// Names of the tensors starting with `prefix`, sorted.
    pub(crate) fn names(&self, prefix: &str) -> Vec<String> {
        self.tensors
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// The shape of `name`.
    pub(crate) fn shape(&self, name: &str) -> Vec<usize> {
        self.entry(name).0.clone()
    }

    fn entry(&self, name: &str) -> &(Vec<usize>, Values) {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("{}: no tensor `{name}`", self.case))
    }

    /// `name`'s values as f32 (integers converted).
    pub(crate) fn floats(&self, name: &str) -> Vec<f32> {
        match &self.entry(name).1 {
            Values::Float(v) => v.clone(),
            Values::Int(v) => v.iter().map(|&i| i as f32).collect(),
        }
    }

    /// `name`'s values as integers (floats rejected).
    pub(crate) fn ints(&self, name: &str) -> Vec<i64> {
        match &self.entry(name).1 {
            Values::Int(v) => v.clone(),
            Values::Float(_) => panic!("{}: `{name}` is a float tensor", self.case),
        }
    }

    /// `name` as a float tensor on `device`; `D` must match its rank.
    pub(crate) fn tensor<B: Backend, const D: usize>(
        &self,
        name: &str,
        device: &B::Device,
    ) -> Tensor<B, D> {
        let shape = self.shape(name);
        assert_eq!(
            shape.len(),
            D,
            "{}: `{name}` has shape {shape:?}",
            self.case
        );
        Tensor::from_data(TensorData::new(self.floats(name), shape), device)
    }

    /// `name` as an integer tensor on `device`.
    pub(crate) fn int_tensor<B: Backend, const D: usize>(
        &self,
        name: &str,
        device: &B::Device,
    ) -> Tensor<B, D, Int> {
        let shape = self.shape(name);
        assert_eq!(
            shape.len(),
            D,
            "{}: `{name}` has shape {shape:?}",
            self.case
        );
        Tensor::from_data(TensorData::new(self.ints(name), shape), device)
    }

    /// Asserts `actual` equals the golden `name` within the case's tolerance (shape too).
    pub(crate) fn assert_close<B: Backend, const D: usize>(
        &self,
        name: &str,
        actual: Tensor<B, D>,
    ) {
        let shape = actual.dims().to_vec();
        let actual = actual
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .expect("f32 data");
        self.assert_close_values(name, &shape, &actual);
    }

    /// [`Golden::assert_close`] on host values.
    #[allow(clippy::neg_cmp_op_on_partial_ord)] // NaN must fail
    pub(crate) fn assert_close_values(&self, name: &str, shape: &[usize], actual: &[f32]) {
        let expected_shape = self.shape(name);
        let numel = |s: &[usize]| s.iter().product::<usize>();
        assert_eq!(
            numel(shape),
            numel(&expected_shape),
            "{}: `{name}` shape {shape:?} vs golden {expected_shape:?}",
            self.case
        );
        let expected = self.floats(name);
        let mut worst: Option<(usize, f64)> = None;
        for (i, (&a, &e)) in actual.iter().zip(&expected).enumerate() {
            let (a, e) = (f64::from(a), f64::from(e));
            let excess = (a - e).abs() - (self.abs + self.rel * e.abs());
            if !(excess <= 0.0) && worst.is_none_or(|(_, w)| excess > w || excess.is_nan()) {
                worst = Some((i, excess));
            }
        }
        if let Some((i, _)) = worst {
            panic!(
                "{}: `{name}`[{i}] = {} but golden is {} (tolerance abs {} + rel {})",
                self.case, actual[i], expected[i], self.abs, self.rel
            );
        }
    }
}
