//! The built-in dataset: the first 600 training and 200 test images of every Fashion-MNIST
//! class, as the original gzip idx files (assets/fashion-mnist-demo) compiled into the binary,
//! so the demo and `--data builtin:fashion-mnist-demo` need no download.

use super::{idx_from_bytes, DataError, Dataset};

/// Data spec of the built-in dataset (accepted by `--data` too).
pub const BUILTIN: &str = "builtin:fashion-mnist-demo";

pub fn builtin_dataset() -> Result<Dataset, DataError> {
    idx_from_bytes(
        BUILTIN,
        include_bytes!("../../assets/fashion-mnist-demo/train-images-idx3-ubyte.gz"),
        include_bytes!("../../assets/fashion-mnist-demo/train-labels-idx1-ubyte.gz"),
        include_bytes!("../../assets/fashion-mnist-demo/t10k-images-idx3-ubyte.gz"),
        include_bytes!("../../assets/fashion-mnist-demo/t10k-labels-idx1-ubyte.gz"),
    )
}
