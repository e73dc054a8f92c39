//! What `--resume` and `transfer --from RUN` read back from a run directory: `checkpoints/latest`,
//! `state.json`, `run.json` (or the older `encoder.json`), `metrics.jsonl`, and the encoder weights (safetensors).
#![no_main]
use libfuzzer_sys::fuzz_target;
use pretext::nn::{BackboneKind, BackboneSpec};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let run = tempfile::tempdir().unwrap();
    let run = run.path();
    let ckpt = run.join("checkpoints/step-00000004");
    std::fs::create_dir_all(&ckpt).unwrap();
    match which % 5 {
        0 => {
            std::fs::write(run.join("checkpoints/latest"), rest).unwrap();
            std::fs::write(
                ckpt.join("state.json"),
                br#"{"step":4,"data_cursor":4,"seed":0,"task":"rotation"}"#,
            )
            .unwrap();
            let _ = pretext::engine::checkpoint::latest_checkpoint(run);
        }
        1 => {
            std::fs::write(run.join("checkpoints/latest"), b"step-00000004").unwrap();
            std::fs::write(ckpt.join("state.json"), rest).unwrap();
            let _ = pretext::engine::checkpoint::latest_checkpoint(run);
        }
        2 => {
            std::fs::write(
                run.join(if which % 2 == 0 {
                    "run.json"
                } else {
                    "encoder.json"
                }),
                rest,
            )
            .unwrap();
            let _ = pretext::transfer::read_encoder_info(run);
        }
        3 => {
            std::fs::write(run.join("metrics.jsonl"), rest).unwrap();
            let _ = pretext::engine::metrics::read(&run.join("metrics.jsonl"));
        }
        _ => {
            let path = run.join("encoder.safetensors");
            std::fs::write(&path, rest).unwrap();
            let device = burn::tensor::Device::flex();
            let enc = BackboneSpec {
                kind: BackboneKind::Convnet,
                in_channels: 1,
                width: 1,
                patch: 0,
            }
            .init(&device);
            let _ = pretext::engine::checkpoint::load_encoder(enc, &path);
        }
    }
});
