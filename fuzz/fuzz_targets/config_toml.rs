//! A pretraining config file and `--set` overrides, resolved and validated, then every task's
//! own section checked by building the task (on a 1-channel 28×28 input).
#![no_main]
use libfuzzer_sys::fuzz_target;
use pretext::config::{resolve, PretrainConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let names = pretext::tasks::image_names();
    // Lines starting with "--set " are overrides, the rest is the preset file.
    let (sets, file): (Vec<&str>, Vec<&str>) = text.lines().partition(|l| l.starts_with("--set "));
    let sets: Vec<String> = sets.iter().map(|l| l[6..].to_string()).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("preset.toml");
    std::fs::write(&path, file.join("\n")).unwrap();
    let Ok(mut cfg) = resolve::<PretrainConfig>(Some(&path), &sets, &names) else {
        return;
    };
    // Keep each execution fast: small models, small jigsaw permutation sets.
    if cfg.validate().is_err() || cfg.width() > 16 {
        return;
    }
    if let Some(toml::Value::Table(t)) = cfg.sections.get_mut("jigsaw") {
        if t.get("permutations")
            .and_then(|v| v.as_integer())
            .is_none_or(|n| n > 10)
        {
            t.insert("permutations".into(), toml::Value::Integer(10));
        }
    }
    let Some(pretext::tasks::Build::Image(build)) =
        pretext::tasks::find(&cfg.task).map(|e| e.build)
    else {
        return;
    };
    let input = pretext::nn::input::InputSpec {
        channels: 1,
        height: 28,
        width: 28,
        mean: vec![0.5],
        std: vec![0.25],
        per_image: false,
    };
    let ctx = pretext::tasks::TaskContext {
        config: &cfg,
        input: &input,
        device: burn::tensor::Device::flex().autodiff(),
    };
    let _ = build(&ctx);
});
