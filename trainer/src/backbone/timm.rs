//! timm state dicts in and out: [`TimmWeights`] reads a safetensors state dict (f32, f16 or
//! bf16) and `load` puts it into a module; `tensors` is the way back for the CNNs.
//!
//! Both walk the module tree with burn's visitor/mapper, so the key of every parameter comes
//! from one rule per architecture (a function of the burn path) and export and import cannot
//! disagree. For the CNNs the rule is a rename and the layouts are PyTorch's; for the ViT a
//! linear weight is transposed and the patch embedding is reshaped (see [`crate::export`]).
//!
//! Tolerated in a file: the classifier (`head.*`, `fc.*`; we build `num_classes=0` trunks)
//! and BatchNorm's `num_batches_tracked` counters. They are dropped at read time and listed
//! by [`TimmWeights::ignored`]. Anything else the model does not have, anything it has that
//! the file lacks, and any shape difference is an [`Error::TimmWeights`] naming the file and
//! the key.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Tensor, TensorData, backend::Backend};
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result, TimmProblem};
use crate::export::NamedTensor;

/// A timm state dict held as f32 host tensors.
#[derive(Debug, Clone)]
pub struct TimmWeights {
    path: PathBuf,
    tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    ignored: Vec<String>,
}

/// Whether a key is one we drop on reading: the classifier or a BN batch counter.
fn is_ignored(key: &str) -> bool {
    key.starts_with("head.")
        || key.starts_with("fc.")
        || key.rsplit('.').next() == Some("num_batches_tracked")
}

/// Little-endian float bytes as f32, or `None` for a non-float dtype.
fn f32_values(bytes: &[u8], dtype: Dtype) -> Option<Vec<f32>> {
    let pairs = || bytes.chunks_exact(2).map(|b| [b[0], b[1]]);
    Some(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => pairs()
            .map(|b| half::f16::from_le_bytes(b).to_f32())
            .collect(),
        Dtype::BF16 => pairs()
            .map(|b| half::bf16::from_le_bytes(b).to_f32())
            .collect(),
        _ => return None,
    })
}

impl TimmWeights {
    /// Reads a safetensors state dict, converting f16 and bf16 to f32.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(Error::io("reading", path))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|source| Error::Safetensors {
            path: path.to_path_buf(),
            source,
        })?;
        let mut entries = Vec::new();
        for (key, view) in st.tensors() {
            if is_ignored(&key) {
                entries.push((key, Vec::new(), Vec::new()));
                continue;
            }
            let values =
                f32_values(view.data(), view.dtype()).ok_or_else(|| Error::TimmWeights {
                    path: path.to_path_buf(),
                    key: key.clone(),
                    problem: TimmProblem::Dtype {
                        dtype: format!("{:?}", view.dtype()),
                    },
                })?;
            entries.push((key, view.shape().to_vec(), values));
        }
        Self::from_entries(path, entries)
    }

    /// Weights from `(timm key, PyTorch shape, row-major values)` entries; `label` stands for
    /// the file in errors. Classifier and `num_batches_tracked` keys are dropped as by
    /// [`TimmWeights::read`].
    pub fn from_entries(
        label: impl Into<PathBuf>,
        entries: impl IntoIterator<Item = (String, Vec<usize>, Vec<f32>)>,
    ) -> Result<Self> {
        let path = label.into();
        let mut tensors = BTreeMap::new();
        let mut ignored = Vec::new();
        for (key, shape, values) in entries {
            if is_ignored(&key) {
                ignored.push(key);
                continue;
            }
            if shape.iter().product::<usize>() != values.len() {
                return Err(Error::TimmWeights {
                    path,
                    key,
                    problem: TimmProblem::Length {
                        shape,
                        values: values.len(),
                    },
                });
            }
            tensors.insert(key, (shape, values));
        }
        ignored.sort();
        Ok(Self {
            path,
            tensors,
            ignored,
        })
    }

    /// The file read (or the label given).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The kept keys, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The PyTorch shape of `key`.
    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        self.tensors.get(key).map(|(shape, _)| shape.as_slice())
    }

    /// The keys dropped on reading (classifier, `num_batches_tracked`), sorted.
    pub fn ignored(&self) -> &[String] {
        &self.ignored
    }

    fn error(&self, key: String, problem: TimmProblem) -> Error {
        Error::TimmWeights {
            path: self.path.clone(),
            key,
            problem,
        }
    }
}

/// Where one burn parameter lives in a timm state dict.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TimmSlot {
    /// The timm key.
    pub(crate) key: String,
    /// Its PyTorch shape.
    pub(crate) shape: Vec<usize>,
    /// Whether burn holds it transposed: PyTorch `[out, rest..]` is burn
    /// `[prod(rest), out]` (linear weights, and the ViT patch embedding).
    pub(crate) transposed: bool,
}

impl TimmSlot {
    /// A parameter stored as it is, under `key`.
    pub(crate) fn same(key: String, shape: &[usize]) -> Self {
        Self {
            key,
            shape: shape.to_vec(),
            transposed: false,
        }
    }
}

/// The ViT rule ([`crate::vit::Vit`] paths to timm keys): LayerNorm `gamma`/`beta` are
/// `weight`/`bias`; linear weights are transposed; the patch embedding `[C*P*P, D]` is
/// timm's conv weight `[D, C, P, P]` transposed; everything else keeps its name and shape.
pub(crate) fn vit_slot(patch_size: usize) -> impl Fn(&[String], &[usize]) -> TimmSlot {
    move |path, shape| {
        let mut parts: Vec<&str> = path.iter().map(String::as_str).collect();
        if let Some(last) = parts.last_mut() {
            *last = match *last {
                "gamma" => "weight",
                "beta" => "bias",
                other => other,
            };
        }
        let key = parts.join(".");
        match shape {
            [k, d] if key == "patch_embed.proj.weight" => {
                let p = patch_size;
                TimmSlot {
                    key,
                    shape: vec![*d, k / (p * p).max(1), p, p],
                    transposed: true,
                }
            }
            [d_in, d_out] if key.ends_with(".weight") => TimmSlot {
                key,
                shape: vec![*d_out, *d_in],
                transposed: true,
            },
            _ => TimmSlot::same(key, shape),
        }
    }
}

/// Loads `weights` into every float tensor of `module` (parameters and running statistics),
/// finding each one's slot with `slot(burn path, burn shape)`. Every parameter must be in
/// the file with its shape, and every kept key of the file must be used.
pub(crate) fn load<B, M, F>(module: M, weights: &TimmWeights, slot: F) -> Result<M>
where
    B: Backend,
    M: Module<B>,
    F: Fn(&[String], &[usize]) -> TimmSlot,
{
    let mut loader = Loader {
        weights,
        slot,
        path: Vec::new(),
        used: BTreeSet::new(),
        missing: Vec::new(),
        error: None,
    };
    let module = module.map(&mut loader);
    if let Some(error) = loader.error {
        return Err(error);
    }
    if let Some((key, rest)) = loader.missing.split_first() {
        let others = rest.len();
        return Err(weights.error(key.clone(), TimmProblem::Missing { others }));
    }
    let unexpected: Vec<&str> = weights
        .keys()
        .filter(|k| !loader.used.contains(*k))
        .collect();
    if let Some((key, rest)) = unexpected.split_first() {
        let others = rest.len();
        return Err(weights.error(key.to_string(), TimmProblem::Unexpected { others }));
    }
    if !weights.ignored().is_empty() {
        tracing::info!(
            file = %weights.path().display(),
            ignored = ?weights.ignored(),
            "timm weights: keys not loaded (classifier, BN counters)"
        );
    }
    Ok(module)
}

struct Loader<'a, F> {
    weights: &'a TimmWeights,
    slot: F,
    path: Vec<String>,
    used: BTreeSet<String>,
    missing: Vec<String>,
    error: Option<Error>,
}

impl<B: Backend, F: Fn(&[String], &[usize]) -> TimmSlot> ModuleMapper<B> for Loader<'_, F> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let dims: [usize; D] = tensor.dims();
        let slot = (self.slot)(&self.path, &dims);
        let Some((shape, values)) = self.weights.tensors.get(&slot.key) else {
            self.missing.push(slot.key);
            return Param::from_mapped_value(id, tensor, mapper);
        };
        if *shape != slot.shape {
            if self.error.is_none() {
                let problem = TimmProblem::Shape {
                    expected: slot.shape,
                    actual: shape.clone(),
                };
                self.error = Some(self.weights.error(slot.key, problem));
            }
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let device = tensor.device();
        let loaded = if slot.transposed {
            let out = shape.first().copied().unwrap_or(1);
            let rest = values.len() / out.max(1);
            Tensor::<B, 2>::from_data(TensorData::new(values.clone(), [out, rest]), &device)
                .transpose() // [rest, out]
                .reshape(dims)
        } else {
            Tensor::<B, D>::from_data(TensorData::new(values.clone(), dims), &device)
        };
        let loaded = if tensor.is_require_grad() {
            loaded.require_grad()
        } else {
            loaded
        };
        self.used.insert(slot.key);
        Param::from_mapped_value(id, loaded, mapper)
    }
}

/// Every float tensor of `module` (parameters and running statistics) under the key
/// `key(burn path)`, in module order, in its burn layout (the CNNs' layouts are PyTorch's).
pub(crate) fn tensors<B, M, F>(module: &M, key: F) -> Result<Vec<NamedTensor>>
where
    B: Backend,
    M: Module<B>,
    F: Fn(&[String]) -> String,
{
    let mut exporter = Exporter {
        key,
        path: Vec::new(),
        out: Vec::new(),
        error: None,
    };
    module.visit(&mut exporter);
    match exporter.error {
        Some(error) => Err(error),
        None => Ok(exporter.out),
    }
}

struct Exporter<F> {
    key: F,
    path: Vec<String>,
    out: Vec<NamedTensor>,
    error: Option<Error>,
}

impl<B: Backend, F: Fn(&[String]) -> String> ModuleVisitor<B> for Exporter<F> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let name = (self.key)(&self.path);
        let tensor = param.val();
        let shape = tensor.dims().to_vec();
        match tensor.into_data().convert::<f32>().to_vec::<f32>() {
            Ok(values) => self.out.push(NamedTensor {
                name,
                shape,
                values,
            }),
            Err(e) => {
                if self.error.is_none() {
                    self.error = Some(Error::TensorData {
                        name,
                        message: format!("{e:?}"),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::batch_norm::BatchNormConfig;
    use burn::backend::Flex;

    type B = Flex;

    fn weights(entries: &[(&str, Vec<usize>)]) -> TimmWeights {
        TimmWeights::from_entries(
            "test.safetensors",
            entries.iter().map(|(k, s)| {
                let n = s.iter().product::<usize>();
                (k.to_string(), s.clone(), (0..n).map(|i| i as f32).collect())
            }),
        )
        .unwrap()
    }

    fn same(path: &[String], shape: &[usize]) -> TimmSlot {
        TimmSlot::same(path.join("."), shape)
    }

    #[test]
    fn loads_parameters_and_running_statistics() {
        let device = Default::default();
        let bn = BatchNormConfig::new(3).init::<B>(&device);
        let w = weights(&[
            ("weight", vec![3]),
            ("bias", vec![3]),
            ("running_mean", vec![3]),
            ("running_var", vec![3]),
            ("num_batches_tracked", vec![]),
            ("fc.weight", vec![10, 3]),
        ]);
        assert_eq!(w.ignored(), ["fc.weight", "num_batches_tracked"]);
        let bn = load(bn, &w, same).unwrap();
        let host = |t: Tensor<B, 1>| t.into_data().to_vec::<f32>().unwrap();
        assert_eq!(host(bn.running_var.value()), [0., 1., 2.]);
        assert_eq!(host(bn.weight.unwrap().val()), [0., 1., 2.]);
    }

    #[test]
    fn missing_unexpected_and_misshapen_keys_are_errors_naming_the_key() {
        let device = Default::default();
        let bn = || BatchNormConfig::new(3).init::<B>(&device);
        let full = [
            ("weight", vec![3]),
            ("bias", vec![3]),
            ("running_mean", vec![3]),
            ("running_var", vec![3]),
        ];
        let err = load(bn(), &weights(&full[..3]), same).unwrap_err();
        assert!(
            matches!(&err, Error::TimmWeights { key, problem: TimmProblem::Missing { others: 0 }, .. } if key == "running_var"),
            "{err}"
        );
        assert!(err.to_string().contains("test.safetensors"), "{err}");
        let mut extra = full.to_vec();
        extra.push(("head_norm.weight", vec![3]));
        let err = load(bn(), &weights(&extra), same).unwrap_err();
        assert!(
            matches!(&err, Error::TimmWeights { key, problem: TimmProblem::Unexpected { .. }, .. } if key == "head_norm.weight"),
            "{err}"
        );
        let mut wrong = full.to_vec();
        wrong[1] = ("bias", vec![4]);
        let err = load(bn(), &weights(&wrong), same).unwrap_err();
        assert!(
            matches!(&err, Error::TimmWeights { key, problem: TimmProblem::Shape { .. }, .. } if key == "bias"),
            "{err}"
        );
        let err =
            TimmWeights::from_entries("x", [("a".to_string(), vec![2], vec![1.0])]).unwrap_err();
        assert!(matches!(
            err,
            Error::TimmWeights {
                problem: TimmProblem::Length { .. },
                ..
            }
        ));
    }

    #[test]
    fn reads_f16_and_bf16_files_and_rejects_integer_parameters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let f16: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        let bf16: Vec<u8> = [0.25f32]
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect();
        let count = 7i64.to_le_bytes();
        let views = vec![
            (
                "a",
                safetensors::tensor::TensorView::new(Dtype::F16, vec![2], &f16).unwrap(),
            ),
            (
                "b",
                safetensors::tensor::TensorView::new(Dtype::BF16, vec![1], &bf16).unwrap(),
            ),
            (
                "bn.num_batches_tracked",
                safetensors::tensor::TensorView::new(Dtype::I64, vec![], &count).unwrap(),
            ),
        ];
        std::fs::write(&path, safetensors::serialize(views.clone(), None).unwrap()).unwrap();
        let w = TimmWeights::read(&path).unwrap();
        assert_eq!(w.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(w.tensors["a"].1, [1.5, -2.0]);
        assert_eq!(w.tensors["b"].1, [0.25]);
        assert_eq!(w.ignored(), ["bn.num_batches_tracked".to_string()]);

        let bad = vec![(
            "c",
            safetensors::tensor::TensorView::new(Dtype::I64, vec![], &count).unwrap(),
        )];
        std::fs::write(&path, safetensors::serialize(bad, None).unwrap()).unwrap();
        let err = TimmWeights::read(&path).unwrap_err();
        assert!(
            matches!(&err, Error::TimmWeights { key, problem: TimmProblem::Dtype { .. }, .. } if key == "c"),
            "{err}"
        );
    }
}
