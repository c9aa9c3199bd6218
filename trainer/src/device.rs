//! Choosing the device a run trains on: the CPU (`Flex`) always, CUDA behind the `cuda`
//! feature. Creating a CUDA device where no driver is installed panics inside cubecl, so
//! [`cuda_device`] first loads the driver library itself and then probes the device with
//! one tiny allocation, turning either failure into a typed error.

/// Where to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// The CPU backend (`burn::backend::Flex`), all cores.
    Cpu,
    /// CUDA device `index` (`cuda` feature).
    Cuda(usize),
}

impl std::str::FromStr for DeviceKind {
    type Err = DeviceError;

    /// `cpu`, `cuda` (device 0) or `cuda:N`.
    fn from_str(s: &str) -> Result<Self, DeviceError> {
        match s {
            "cpu" => Ok(DeviceKind::Cpu),
            "cuda" => Ok(DeviceKind::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|i| i.parse().ok())
                .map(DeviceKind::Cuda)
                .ok_or_else(|| DeviceError::Unknown {
                    name: s.to_string(),
                }),
        }
    }
}

/// Why a device cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Not `cpu`, `cuda` or `cuda:N`.
    #[error("unknown device `{name}`: expected `cpu`, `cuda` or `cuda:N`")]
    Unknown {
        /// What was given.
        name: String,
    },
    /// This build has no CUDA support.
    #[error("this build of tessera has no CUDA support: rebuild with `--features cuda`")]
    NotCompiled,
    /// The CUDA driver library cannot be loaded.
    #[error("no CUDA driver: cannot load {library} ({message}); is the NVIDIA driver installed?")]
    NoDriver {
        /// The library tried last.
        library: &'static str,
        /// The loader's message.
        message: String,
    },
    /// The driver loaded but the device could not be initialised.
    #[error("CUDA device {index} could not be initialised: {message}")]
    Init {
        /// The device index.
        index: usize,
        /// The panic message from the runtime.
        message: String,
    },
}

/// CUDA device `index`, checked: the driver library loads and a one-element tensor can be
/// created and read back.
#[cfg(feature = "cuda")]
pub fn cuda_device(index: usize) -> Result<burn::backend::cuda::CudaDevice, DeviceError> {
    use burn::backend::Cuda;
    use burn::tensor::Tensor;

    let mut last = String::new();
    let mut found = false;
    for library in ["libcuda.so.1", "libcuda.so"] {
        // SAFETY: loading the NVIDIA driver runs its initialisers, which is what creating a
        // CUDA device would do anyway; the handle is dropped right away.
        match unsafe { libloading::Library::new(library) } {
            Ok(_) => {
                found = true;
                break;
            }
            Err(e) => last = e.to_string(),
        }
    }
    if !found {
        return Err(DeviceError::NoDriver {
            library: "libcuda.so",
            message: last,
        });
    }
    let probe = std::panic::catch_unwind(|| {
        let device = burn::backend::cuda::CudaDevice::new(index);
        let _ = Tensor::<Cuda, 1>::zeros([1], &device).into_data();
        device
    });
    probe.map_err(|panic| DeviceError::Init {
        index,
        message: panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown error".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("cpu".parse::<DeviceKind>().unwrap(), DeviceKind::Cpu);
        assert_eq!("cuda".parse::<DeviceKind>().unwrap(), DeviceKind::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceKind>().unwrap(), DeviceKind::Cuda(3));
        assert!(
            "tpu"
                .parse::<DeviceKind>()
                .unwrap_err()
                .to_string()
                .contains("`tpu`")
        );
    }
}
