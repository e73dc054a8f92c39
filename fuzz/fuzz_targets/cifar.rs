//! CIFAR-10 / CIFAR-100 binary batches read from a real directory.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    if which % 2 == 0 {
        std::fs::write(dir.path().join("data_batch_1.bin"), rest).unwrap();
        let _ = pretext::data::cifar::read_cifar10(dir.path(), None);
    } else {
        std::fs::write(dir.path().join("train.bin"), rest).unwrap();
        let _ = pretext::data::cifar::read_cifar100(dir.path(), None);
    }
});
