//! idx (MNIST-style) image + label files, raw or gzip: any bytes give a dataset or an error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte: where the images end and the labels begin.
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let cut = (cut as usize * rest.len() / 255).min(rest.len());
    let (images, labels) = rest.split_at(cut);
    let _ = pretext::data::idx_from_bytes("fuzz", images, labels, &[], &[]);
});
