//! Memory: the process is capped at the machine's RAM and swap, so that a model or batch
//! too large for it fails as a clean "not enough memory" error instead of being killed
//! by the kernel's OOM killer minutes later, and that failure is worded for the user.

use std::any::Any;

/// Caps the data segment (heap and private mappings, `RLIMIT_DATA`) at RAM + swap, so
/// an allocation that cannot be met fails at once. Skipped where CUDA is present (its
/// driver reserves large address ranges) or a cap is already set, and with
/// `EKPHRASIS_NO_MEMORY_CAP=1`.
pub fn cap_at_machine_memory() {
    if std::env::var_os("EKPHRASIS_NO_MEMORY_CAP").is_some() || tch::Cuda::is_available() {
        return;
    }
    if let Some(bytes) = machine_memory() {
        cap_data_bytes(bytes);
    }
}

/// Lowers the soft `RLIMIT_DATA` to `bytes` when it is unlimited or higher.
pub fn cap_data_bytes(bytes: u64) {
    let mut now = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_DATA, &mut now) != 0 {
            return;
        }
        if now.rlim_cur != libc::RLIM_INFINITY && now.rlim_cur <= bytes {
            return;
        }
        let want = libc::rlimit {
            rlim_cur: bytes.min(now.rlim_max),
            rlim_max: now.rlim_max,
        };
        libc::setrlimit(libc::RLIMIT_DATA, &want);
    }
}

/// RAM + swap in bytes, from `/proc/meminfo`.
pub fn machine_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = |key: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some((kib("MemTotal:")? + kib("SwapTotal:").unwrap_or(0)) * 1024)
}

/// The user-facing error for a panic payload that is a failed tensor allocation
/// (libtorch's "can't allocate memory" / CUDA "out of memory"), or `None` for any other
/// panic, which stays a bug to report.
pub fn allocation_failure(payload: &(dyn Any + Send)) -> Option<String> {
    let text = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())?;
    let cpu = text.contains("can't allocate memory") || text.contains("not enough memory");
    let cuda = text.contains("CUDA out of memory");
    if !cpu && !cuda {
        return None;
    }
    let asked = text
        .split("tried to allocate ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse::<f64>().ok())
        .map(|b| format!(" (one tensor of {:.1} GB)", b / 1e9))
        .unwrap_or_default();
    let have = match (cuda, machine_memory()) {
        (false, Some(b)) => format!(
            "; this machine has {:.1} GB of RAM and swap",
            b as f64 / 1e9
        ),
        _ => String::new(),
    };
    Some(format!(
        "not enough memory{asked}{have}: lower the model's sizes (dim, mlp, layers, channels, image_size) or the batch size"
    ))
}

/// A panic hook that stays silent for allocation failures (the caller reports them as
/// an error through [`allocation_failure`]) and prints every other panic as Rust does.
pub fn install_quiet_allocation_failures() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if allocation_failure(info.payload()).is_none() {
            default(info);
        }
    }));
}
