//! Export of a trained encoder as safetensors with timm's parameter names, so that
//! `timm.create_model(arch, num_classes=0, ...)` then `load_state_dict` takes it as is.
//!
//! Two layout changes happen here and nowhere else: burn's `Linear` stores its weight
//! `[in, out]` while PyTorch's stores `[out, in]` (every linear weight is transposed), and
//! the patch embedding is a linear over `(channel, row, column)`-flattened patches, so
//! timm's conv weight `[D, C, P, P]` is its transpose reshaped. LayerNorm `gamma`/`beta`
//! become `weight`/`bias`. The position table is written as `pos_embed` (a parameter in timm
//! too; ours is not trained). Everything is f32, little endian, and the file appears atomically.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use burn::module::Param;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::{Tensor, backend::Backend};
use safetensors::{Dtype, tensor::TensorView};

use crate::error::{Error, Result};
use crate::eval::features::Which;
use crate::vit::Vit;

/// One exported tensor: timm name, PyTorch shape, row-major f32 values.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// timm state-dict key.
    pub name: String,
    /// Shape in PyTorch's layout.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub values: Vec<f32>,
}

/// What [`export`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSummary {
    /// The checkpoint read.
    pub checkpoint: PathBuf,
    /// The file written.
    pub output: PathBuf,
    /// Optimiser steps the checkpoint had completed.
    pub step: u64,
    /// Tensors written.
    pub tensors: usize,
    /// Scalars written.
    pub parameters: usize,
}

fn named<B: Backend, const D: usize>(name: String, tensor: Tensor<B, D>) -> Result<NamedTensor> {
    let shape = tensor.dims().to_vec();
    let values = tensor
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| Error::TensorData {
            name: name.clone(),
            message: format!("{e:?}"),
        })?;
    Ok(NamedTensor {
        name,
        shape,
        values,
    })
}

fn linear<B: Backend>(out: &mut Vec<NamedTensor>, prefix: &str, linear: &Linear<B>) -> Result<()> {
    out.push(named(
        format!("{prefix}.weight"),
        linear.weight.val().transpose(),
    )?);
    if let Some(bias) = &linear.bias {
        out.push(named(format!("{prefix}.bias"), bias.val())?);
    }
    Ok(())
}

fn layer_norm<B: Backend>(
    out: &mut Vec<NamedTensor>,
    prefix: &str,
    norm: &LayerNorm<B>,
) -> Result<()> {
    out.push(named(format!("{prefix}.weight"), norm.gamma.val())?);
    if let Some(beta) = &norm.beta {
        out.push(named(format!("{prefix}.bias"), beta.val())?);
    }
    Ok(())
}

/// The encoder's tensors under timm names and layouts, in timm's state-dict order.
pub fn timm_tensors<B: Backend>(vit: &Vit<B>) -> Result<Vec<NamedTensor>> {
    let mut out = Vec::new();
    let token: &Param<Tensor<B, 3>> = &vit.cls_token;
    out.push(named("cls_token".into(), token.val())?);
    out.push(named("pos_embed".into(), vit.pos_embed.val())?);
    let proj = &vit.patch_embed.proj;
    let [patch_dim, d] = proj.weight.dims();
    let p = vit.patch_embed.patch_size;
    let c = patch_dim / (p * p);
    out.push(named(
        "patch_embed.proj.weight".into(),
        proj.weight.val().transpose().reshape([d, c, p, p]),
    )?);
    if let Some(bias) = &proj.bias {
        out.push(named("patch_embed.proj.bias".into(), bias.val())?);
    }
    for (i, block) in vit.blocks.iter().enumerate() {
        layer_norm(&mut out, &format!("blocks.{i}.norm1"), &block.norm1)?;
        linear(&mut out, &format!("blocks.{i}.attn.qkv"), &block.attn.qkv)?;
        linear(&mut out, &format!("blocks.{i}.attn.proj"), &block.attn.proj)?;
        layer_norm(&mut out, &format!("blocks.{i}.norm2"), &block.norm2)?;
        linear(&mut out, &format!("blocks.{i}.mlp.fc1"), &block.mlp.fc1)?;
        linear(&mut out, &format!("blocks.{i}.mlp.fc2"), &block.mlp.fc2)?;
    }
    layer_norm(&mut out, "norm", &vit.norm)?;
    Ok(out)
}

/// Writes `tensors` to `path` as safetensors (temporary name, fsync, rename).
pub fn write_safetensors(
    tensors: &[NamedTensor],
    metadata: HashMap<String, String>,
    path: &Path,
) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| t.values.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| {
            Ok((
                t.name.as_str(),
                TensorView::new(Dtype::F32, t.shape.clone(), b)?,
            ))
        })
        .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|source| Error::Safetensors {
            path: path.to_path_buf(),
            source,
        })?;
    let encoded =
        safetensors::serialize(views, Some(metadata)).map_err(|source| Error::Safetensors {
            path: path.to_path_buf(),
            source,
        })?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let mut file = fs::File::create(&tmp).map_err(Error::io("creating", &tmp))?;
    file.write_all(&encoded)
        .map_err(Error::io("writing", &tmp))?;
    file.sync_all().map_err(Error::io("syncing", &tmp))?;
    fs::rename(&tmp, path).map_err(Error::io("renaming", &tmp))
}

/// Exports the backbone of the checkpoint `checkpoint_or_run_dir` (a checkpoint directory, or
/// a run directory whose newest complete checkpoint is used) to `output`: the student, or
/// with [`Which::Teacher`] the momentum teacher.
pub fn export(checkpoint_or_run_dir: &Path, which: Which, output: &Path) -> Result<ExportSummary> {
    let encoder = crate::eval::features::load_encoder::<Autodiff<Flex>>(
        checkpoint_or_run_dir,
        which,
        &Default::default(),
    )?;
    let tensors = encoder.backbone.timm_tensors()?;
    let mut metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("tessera.step".to_string(), encoder.step.to_string()),
        (
            "tessera.arch".to_string(),
            encoder.config.arch_name().unwrap_or("vit").to_string(),
        ),
        (
            "tessera.network".to_string(),
            format!("{which:?}").to_lowercase(),
        ),
        ("tessera.img_size".to_string(), encoder.img_size.to_string()),
    ]);
    if let crate::backbone::BackboneConfig::Vit(enc) = &encoder.config {
        for (key, value) in [
            ("patch_size", enc.patch_size.to_string()),
            ("embed_dim", enc.embed_dim.to_string()),
            ("depth", enc.depth.to_string()),
            ("num_heads", enc.num_heads.to_string()),
            ("mlp_ratio", enc.mlp_ratio.to_string()),
        ] {
            metadata.insert(format!("tessera.{key}"), value);
        }
    }
    write_safetensors(&tensors, metadata, output)?;
    Ok(ExportSummary {
        checkpoint: encoder.checkpoint,
        output: output.to_path_buf(),
        step: encoder.step,
        tensors: tensors.len(),
        parameters: tensors.iter().map(|t| t.values.len()).sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vit::VitConfig;
    use burn::module::Module;
    use safetensors::SafeTensors;

    fn floats(view: &TensorView<'_>) -> Vec<f32> {
        view.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    fn host<const D: usize>(t: Tensor<Flex, D>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().unwrap()
    }

    #[test]
    fn round_trip_has_timm_names_shapes_and_transposes() {
        let device = Default::default();
        let cfg = VitConfig {
            img_size: 8,
            patch_size: 4,
            in_chans: 3,
            embed_dim: 8,
            depth: 2,
            num_heads: 2,
            mlp_ratio: 2.0,
            drop_path_rate: 0.0,
        };
        let vit = cfg.init::<Flex>(&device);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("enc.safetensors");
        write_safetensors(&timm_tensors(&vit).unwrap(), HashMap::new(), &path).unwrap();

        let bytes = fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let (d, p, l) = (8, 4, 4);
        let mut expected = vec![
            ("cls_token".to_string(), vec![1, 1, d]),
            ("pos_embed".into(), vec![1, 1 + l, d]),
            ("patch_embed.proj.weight".into(), vec![d, 3, p, p]),
            ("patch_embed.proj.bias".into(), vec![d]),
            ("norm.weight".into(), vec![d]),
            ("norm.bias".into(), vec![d]),
        ];
        for i in 0..2 {
            for (suffix, shape) in [
                ("norm1.weight", vec![d]),
                ("norm1.bias", vec![d]),
                ("attn.qkv.weight", vec![3 * d, d]),
                ("attn.qkv.bias", vec![3 * d]),
                ("attn.proj.weight", vec![d, d]),
                ("attn.proj.bias", vec![d]),
                ("norm2.weight", vec![d]),
                ("norm2.bias", vec![d]),
                ("mlp.fc1.weight", vec![2 * d, d]),
                ("mlp.fc1.bias", vec![2 * d]),
                ("mlp.fc2.weight", vec![d, 2 * d]),
                ("mlp.fc2.bias", vec![d]),
            ] {
                expected.push((format!("blocks.{i}.{suffix}"), shape));
            }
        }
        let mut names: Vec<_> = st.names().into_iter().map(String::from).collect();
        names.sort();
        let mut want: Vec<_> = expected.iter().map(|(n, _)| n.clone()).collect();
        want.sort();
        assert_eq!(names, want);
        for (name, shape) in &expected {
            let t = st.tensor(name).unwrap();
            assert_eq!(t.dtype(), Dtype::F32, "{name}");
            assert_eq!(t.shape(), shape.as_slice(), "{name}");
        }
        // Every scalar is exported once (the position table is a parameter, untrained).
        let total: usize = expected
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(total, vit.num_params());

        // qkv: PyTorch [out, in] is burn's [in, out] transposed.
        let qkv = host(vit.blocks[1].attn.qkv.weight.val()); // [d, 3d]
        let got = floats(&st.tensor("blocks.1.attn.qkv.weight").unwrap()); // [3d, d]
        for o in 0..3 * d {
            for i in 0..d {
                assert_eq!(got[o * d + i], qkv[i * 3 * d + o]);
            }
        }
        // patch embedding: conv [d, c, p, q] is linear row c*P*P + p*P + q, column d.
        let w = host(vit.patch_embed.proj.weight.val()); // [3*P*P, d]
        let got = floats(&st.tensor("patch_embed.proj.weight").unwrap());
        for (dd, c, pi, qi) in (0..d).flat_map(|a| {
            (0..3).flat_map(move |b| (0..p).flat_map(move |e| (0..p).map(move |f| (a, b, e, f))))
        }) {
            assert_eq!(
                got[((dd * 3 + c) * p + pi) * p + qi],
                w[(c * p * p + pi * p + qi) * d + dd]
            );
        }
        assert_eq!(
            floats(&st.tensor("norm.weight").unwrap()),
            host(vit.norm.gamma.val())
        );
        assert_eq!(
            floats(&st.tensor("cls_token").unwrap()),
            host(vit.cls_token.val())
        );
        assert_eq!(
            floats(&st.tensor("pos_embed").unwrap()),
            host(vit.pos_embed.val())
        );
        assert_eq!(
            floats(&st.tensor("blocks.0.mlp.fc2.bias").unwrap()),
            host(vit.blocks[0].mlp.fc2.bias.as_ref().unwrap().val())
        );
    }
}
