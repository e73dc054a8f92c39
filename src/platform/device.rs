//! The compute device, chosen at run time: `cpu` (burn's pure-Rust flex backend, always built),
//! `wgpu` (any GPU wgpu reaches: Vulkan, Metal, DirectX 12, or Mesa's software Vulkan),
//! `vulkan` (wgpu pinned to Vulkan, SPIR-V shaders) and `cuda` (only in builds with those Cargo
//! features). [`describe`] names what a device is (the adapter, its API and driver), for the
//! run's first line and `run.json`.

use burn::prelude::Device;

use crate::error::{Error, Result};

pub const DEVICES: &[&str] = &["cpu", "wgpu", "vulkan", "cuda"];

pub fn parse(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::flex()),
        #[cfg(feature = "wgpu")]
        "wgpu" => gpu::open(name, burn::tensor::wgpu::WgpuBackend::Auto),
        #[cfg(feature = "vulkan")]
        "vulkan" => gpu::open(name, burn::tensor::wgpu::WgpuBackend::Vulkan),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Device::cuda(0)),
        #[cfg(not(feature = "wgpu"))]
        "wgpu" => Err(missing_feature(name)),
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

/// Whether `device` is the CPU (burn's flex backend, also under autodiff).
pub fn is_cpu(device: &Device) -> bool {
    device.clone().inner() == Device::flex()
}

/// What `device` is, in a few words: `cpu (2 compute threads, AVX-512)`, or a GPU's adapter
/// with its graphics API and driver (`llvmpipe (LLVM 15.0.6, 256 bits), Vulkan, llvmpipe Mesa
/// 22.3.6`).
pub fn describe(device: &Device) -> String {
    let inner = device.clone().inner();
    if is_cpu(&inner) {
        let threads = rayon::current_num_threads();
        return format!(
            "cpu ({threads} compute thread{}, {})",
            if threads == 1 { "" } else { "s" },
            cpu_simd()
        );
    }
    #[cfg(feature = "wgpu")]
    if let Some(adapter) = gpu::adapter(&inner) {
        return adapter;
    }
    format!("{inner:?}")
}

/// The widest vector instructions the CPU kernels pick at run time on this CPU (gemm, `exp`,
/// GELU, element-wise ops): `AVX-512`, `AVX2`, `SSE2` (x86-64) or `NEON` (aarch64). Speed
/// depends on it more than on anything else about a CPU (BENCHMARKS.md, 2026-12-06).
pub fn cpu_simd() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return "AVX-512";
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return "AVX2";
        }
        "SSE2"
    }
    #[cfg(target_arch = "aarch64")]
    {
        "NEON"
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "scalar"
    }
}

/// wgpu devices: opened once per graphics API for the whole process (burn registers a runtime
/// once), with the adapter they run on.
#[cfg(feature = "wgpu")]
mod gpu {
    use std::sync::Mutex;

    use burn::prelude::Device;
    use burn::tensor::wgpu::WgpuBackend;

    use crate::error::{Error, Result};

    /// Each opened API's device and adapter description, or why it could not open.
    type Opened = Vec<(String, std::result::Result<(Device, String), String>)>;
    static OPENED: Mutex<Opened> = Mutex::new(Vec::new());

    pub fn open(name: &str, api: WgpuBackend) -> Result<Device> {
        let mut opened = OPENED.lock().unwrap_or_else(|e| e.into_inner());
        if !opened.iter().any(|(n, _)| n == name) {
            // wgpu reports a missing adapter as an error, but a broken driver can panic inside it
            let result = std::panic::catch_unwind(|| {
                Device::wgpu_options().graphics_api(api).init_with_setup()
            })
            .map_err(|panic| {
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "the driver crashed".into())
            })
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map(|(device, setup)| {
                let a = setup.adapter.get_info();
                let driver = [a.driver.as_str(), a.driver_info.as_str()]
                    .iter()
                    .filter(|s| !s.is_empty())
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" ");
                (device, format!("{}, {:?}, {driver}", a.name, a.backend))
            });
            opened.push((name.to_string(), result));
        }
        let (_, result) = opened.iter().find(|(n, _)| n == name).expect("just opened");
        match result {
            Ok((device, _)) => Ok(device.clone()),
            Err(why) => Err(Error::Usage(format!(
                "--device {name}: no GPU adapter could be opened ({}); is a Vulkan, Metal or \
                 DirectX 12 driver installed? (Linux without a GPU: Mesa's lavapipe, Debian \
                 package mesa-vulkan-drivers)",
                why.lines().next().unwrap_or("").trim()
            ))),
        }
    }

    /// The adapter a device opened by [`open`] runs on.
    pub fn adapter(device: &Device) -> Option<String> {
        let opened = OPENED.lock().unwrap_or_else(|e| e.into_inner());
        opened.iter().find_map(|(_, r)| match r {
            Ok((d, adapter)) if d == device => Some(adapter.clone()),
            _ => None,
        })
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
