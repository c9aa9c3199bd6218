//! The backbones against timm 1.0.31 (`shared/testdata/ssl-goldens/backbone_*`): weights
//! imported through [`TimmWeights`], features in eval and train mode, and the export round
//! trip.

use std::collections::BTreeMap;

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, Param, ParamId};
use burn::tensor::{Distribution, Tensor};

use super::*;
use crate::error::{Error, TimmProblem};
use crate::goldens::Golden;

type B = Flex;

/// The golden `weight.*` tensors as a timm state dict.
fn golden_weights(golden: &Golden) -> TimmWeights {
    let entries = golden.names("weight.").into_iter().map(|name| {
        let key = name["weight.".len()..].to_string();
        (key, golden.shape(&name), golden.floats(&name))
    });
    TimmWeights::from_entries(format!("{}.safetensors", golden.case), entries).unwrap()
}

/// `timm_tensors` has exactly the golden keys, shapes and values.
fn assert_exports_golden(golden: &Golden, model: &Backbone<B>) {
    let exported: BTreeMap<String, NamedTensor> = model
        .timm_tensors()
        .unwrap()
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect();
    let expected: Vec<String> = golden
        .names("weight.")
        .iter()
        .map(|n| n["weight.".len()..].to_string())
        .collect();
    assert_eq!(exported.keys().cloned().collect::<Vec<_>>(), expected);
    for key in expected {
        let name = format!("weight.{key}");
        assert_eq!(exported[&key].shape, golden.shape(&name), "{key}");
        assert_eq!(exported[&key].values, golden.floats(&name), "{key}");
    }
}

fn check_cnn(case: &str, config: BackboneConfig) {
    let golden = Golden::load(case);
    let device = Default::default();
    let model = config
        .init::<B>(&device)
        .load_timm(&golden_weights(&golden))
        .unwrap();
    assert_exports_golden(&golden, &model);
    let x = golden.tensor::<B, 4>("in.x", &device);
    golden.assert_close(
        "out.features_eval",
        model.forward_features(x.clone(), NormMode::Eval),
    );
    golden.assert_close(
        "out.features_train",
        model.forward_features(x, NormMode::Train),
    );
}

#[test]
fn resnet18_matches_timm() {
    check_cnn(
        "backbone_resnet18",
        BackboneConfig::by_name("resnet18").unwrap(),
    );
}

#[test]
fn regnety_002_matches_timm() {
    check_cnn(
        "backbone_regnety_002",
        BackboneConfig::by_name("regnety_002").unwrap(),
    );
}

#[test]
fn vit_tiny_matches_timm() {
    let golden = Golden::load("backbone_vit_tiny_patch16_224");
    let device = Default::default();
    let model = BackboneConfig::by_name("vit_tiny_patch16_224")
        .unwrap()
        .init::<B>(&device)
        .load_timm(&golden_weights(&golden))
        .unwrap();
    assert_exports_golden(&golden, &model);
    let x = golden.tensor::<B, 4>("in.x", &device);
    golden.assert_close(
        "out.features_eval",
        model.forward_features(x, NormMode::Eval),
    );
}

#[test]
fn import_errors_name_the_file_and_the_key() {
    let golden = Golden::load("backbone_regnety_002");
    let device = Default::default();
    let model = || {
        BackboneConfig::by_name("regnety_002")
            .unwrap()
            .init::<B>(&device)
    };
    let entries = || {
        golden.names("weight.").into_iter().map(|name| {
            let key = name["weight.".len()..].to_string();
            (key, golden.shape(&name), golden.floats(&name))
        })
    };
    // A classifier is tolerated and reported.
    let with_head = entries().chain([
        ("head.fc.weight".to_string(), vec![2, 368], vec![0.0; 736]),
        ("head.fc.bias".to_string(), vec![2], vec![0.0; 2]),
    ]);
    let weights = TimmWeights::from_entries("with_head", with_head).unwrap();
    assert_eq!(weights.ignored(), ["head.fc.bias", "head.fc.weight"]);
    model().load_timm(&weights).unwrap();
    // A missing key.
    let weights = TimmWeights::from_entries(
        "partial.safetensors",
        entries().filter(|(k, _, _)| k != "s2.b1.se.fc1.bias"),
    )
    .unwrap();
    let err = model().load_timm(&weights).unwrap_err();
    assert!(
        matches!(&err, Error::TimmWeights { key, problem: TimmProblem::Missing { .. }, .. } if key == "s2.b1.se.fc1.bias"),
        "{err}"
    );
    assert!(err.to_string().contains("partial.safetensors"), "{err}");
    // Weights of another architecture.
    let err = BackboneConfig::by_name("regnety_004")
        .unwrap()
        .init::<B>(&device)
        .load_timm(&golden_weights(&golden))
        .unwrap_err();
    assert!(matches!(err, Error::TimmWeights { .. }), "{err}");
}

#[test]
fn vit_round_trip_through_timm_keys() {
    let device = Default::default();
    let config = BackboneConfig::Vit(crate::vit::VitConfig {
        img_size: 8,
        patch_size: 4,
        in_chans: 3,
        embed_dim: 8,
        depth: 2,
        num_heads: 2,
        mlp_ratio: 2.0,
        drop_path_rate: 0.0,
    });
    let source = config.init::<B>(&device);
    let entries = source
        .timm_tensors()
        .unwrap()
        .into_iter()
        .map(|t| (t.name, t.shape, t.values));
    let weights = TimmWeights::from_entries("vit", entries).unwrap();
    let copy = config.init::<B>(&device).load_timm(&weights).unwrap();
    assert_eq!(copy.timm_tensors().unwrap(), source.timm_tensors().unwrap());
    let images = Tensor::<B, 4>::random([2, 3, 8, 8], Distribution::Default, &device);
    copy.forward_features(images.clone(), NormMode::Eval)
        .into_data()
        .assert_eq(
            &source.forward_features(images, NormMode::Eval).into_data(),
            true,
        );
}

#[test]
fn imported_parameters_stay_trainable_and_the_position_table_does_not() {
    type A = Autodiff<Flex>;
    let device = Default::default();
    let config = BackboneConfig::Vit(crate::vit::VitConfig {
        img_size: 8,
        patch_size: 4,
        in_chans: 3,
        embed_dim: 8,
        depth: 1,
        num_heads: 2,
        mlp_ratio: 2.0,
        drop_path_rate: 0.0,
    });
    let entries = config
        .init::<B>(&device)
        .timm_tensors()
        .unwrap()
        .into_iter()
        .map(|t| (t.name, t.shape, t.values));
    let weights = TimmWeights::from_entries("vit", entries).unwrap();
    let Backbone::Vit(vit) = config.init::<A>(&device).load_timm(&weights).unwrap() else {
        panic!("a ViT config builds a ViT");
    };
    let images = Tensor::<A, 4>::random([2, 3, 8, 8], Distribution::Default, &device);
    let grads = vit.forward(images).sum().backward();
    assert!(vit.blocks[0].attn.qkv.weight.grad(&grads).is_some());
    assert!(vit.patch_embed.proj.weight.grad(&grads).is_some());
    assert!(!vit.pos_embed.val().is_require_grad());
    assert!(vit.pos_embed.grad(&grads).is_none());
    // A changed table survives a record round trip, still without gradient.
    let mut changed = vit.clone();
    changed.pos_embed = Param::initialized(ParamId::new(), vit.pos_embed.val().add_scalar(1.0));
    let Backbone::Vit(loaded) = config
        .init::<A>(&device)
        .load_record(Backbone::Vit(changed.clone()).into_record())
    else {
        panic!("a ViT config builds a ViT");
    };
    assert!(!loaded.pos_embed.val().is_require_grad());
    loaded
        .pos_embed
        .val()
        .into_data()
        .assert_eq(&changed.pos_embed.val().into_data(), true);
}

#[test]
fn configs_by_name_serde_and_records() {
    assert_eq!(
        BackboneConfig::NAMES.len(),
        4 + 5 + RegNetConfig::NAMES.len()
    );
    for &name in BackboneConfig::NAMES {
        let config = BackboneConfig::by_name(name).unwrap();
        assert_eq!(config.arch_name(), Some(name));
        assert!(config.check().is_ok(), "{name}");
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(
            serde_json::from_str::<BackboneConfig>(&json).unwrap(),
            config
        );
    }
    assert!(BackboneConfig::by_name("resnet26d").is_none());
    assert_eq!(
        BackboneConfig::by_name("resnet50").unwrap().num_features(),
        2048
    );
    assert_eq!(
        BackboneConfig::by_name("regnety_002")
            .unwrap()
            .num_features(),
        368
    );
    assert_eq!(
        BackboneConfig::by_name("vit_small_patch16_224")
            .unwrap()
            .num_features(),
        384
    );

    // The enum's record carries the variant's parameters and running statistics.
    let device = Default::default();
    let config = BackboneConfig::ResNet(ResNetConfig::resnet18().with_cifar_stem());
    let source = config.init::<B>(&device);
    let images = Tensor::<B, 4>::random([2, 3, 16, 16], Distribution::Default, &device);
    source.forward_features(images.clone(), NormMode::Train); // moves the running stats
    let copy = config
        .init::<B>(&device)
        .load_record(source.clone().into_record());
    assert_eq!(copy.num_features(), 512);
    copy.forward_features(images.clone(), NormMode::Eval)
        .into_data()
        .assert_eq(
            &source.forward_features(images, NormMode::Eval).into_data(),
            true,
        );
}
