//! The compute device, chosen at run time: `cpu` (burn's pure-Rust flex backend, always built),
//! `vulkan` and `cuda` (only in builds with those Cargo features).

use burn::prelude::Device;

use crate::error::{Error, Result};

pub const DEVICES: &[&str] = &["cpu", "vulkan", "cuda"];

pub fn parse(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::flex()),
        #[cfg(feature = "vulkan")]
        "vulkan" => Ok(Device::vulkan(Default::default())),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Device::cuda(0)),
        #[cfg(not(feature = "vulkan"))]
        "vulkan" => Err(missing_feature(name)),
        #[cfg(not(feature = "cuda"))]
        "cuda" => Err(missing_feature(name)),
        other => Err(Error::Usage(format!(
            "--device {other}: unknown device; expected one of {}",
            DEVICES.join(", ")
        ))),
    }
}

#[allow(dead_code)] // unused in a build with every GPU feature
fn missing_feature(name: &str) -> Error {
    Error::Usage(format!(
        "--device {name}: this binary was built without the `{name}` feature; rebuild with `cargo build --release --features {name}`"
    ))
}

/// Seed the device's random generator and build something from it (weights) while no other
/// thread of this process can draw from that generator in between: burn's generator is global
/// per backend, so two runs initialising at once (tests in parallel, `compare`) would otherwise
/// interleave their draws and lose reproducibility.
pub fn seeded<T>(device: &Device, seed: u64, init: impl FnOnce() -> T) -> T {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    device.seed(seed);
    init()
}

/// `module` with every parameter initialised now. burn initialises parameters lazily, at their
/// first use, drawing from whatever the generator holds then; a module built inside [`seeded`]
/// must draw there, or two modules built from the same seed (or a run with another model in
/// between) get different weights.
pub fn init_now<M: burn::module::Module>(module: M) -> M {
    struct Touch;
    impl burn::module::ModuleVisitor for Touch {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<burn::Tensor<D>>) {
            let _ = param.val();
        }
    }
    module.visit(&mut Touch);
    module
}
