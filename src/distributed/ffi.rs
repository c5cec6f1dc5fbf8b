//! The unsafe edge: declarations of the C ABI in `c10d_shim.cpp` and a safe owner of the
//! process-group handle. Every call returns the C++ exception's text as an error.

use super::Reduce;
use anyhow::{bail, Result};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use tch::Tensor;
use torch_sys::C_tensor;

extern "C" {
    fn ekphrasis_c10d_free_message(message: *mut c_char);
    #[allow(clippy::too_many_arguments)]
    fn ekphrasis_c10d_new(
        backend: *const c_char,
        addr: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        host_store: c_int,
        prefix: *const c_char,
        timeout_ms: i64,
        err: *mut *mut c_char,
    ) -> *mut c_void;
    fn ekphrasis_c10d_free(group: *mut c_void);
    fn ekphrasis_c10d_all_reduce(
        group: *mut c_void,
        t: *mut C_tensor,
        op: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    fn ekphrasis_c10d_broadcast(
        group: *mut c_void,
        t: *mut C_tensor,
        root: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    fn ekphrasis_c10d_all_reduce_grad(
        group: *mut c_void,
        t: *mut C_tensor,
        err: *mut *mut c_char,
    ) -> *mut C_tensor;
}

/// Takes ownership of a message the shim allocated.
fn take_message(err: *mut c_char) -> String {
    if err.is_null() {
        return "c10d failed without a message".into();
    }
    // SAFETY: the shim wrote a NUL-terminated malloc'd string and hands it over.
    let text = unsafe { CStr::from_ptr(err) }
        .to_string_lossy()
        .into_owned();
    unsafe { ekphrasis_c10d_free_message(err) };
    text
}

fn c_string(s: &str, what: &str) -> Result<CString> {
    CString::new(s).map_err(|_| anyhow::anyhow!("{what} {s:?} holds a NUL byte"))
}

fn c_int_of(v: usize, what: &str) -> Result<c_int> {
    c_int::try_from(v).map_err(|_| anyhow::anyhow!("{what} {v} is too large"))
}

/// An owned c10d process group (a `Group*` on the C++ side).
pub struct RawGroup(*mut c_void);

// SAFETY: c10d process groups are thread-safe; the handle is only ever read.
unsafe impl Send for RawGroup {}
unsafe impl Sync for RawGroup {}

impl RawGroup {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        backend: &str,
        addr: &str,
        port: u16,
        rank: usize,
        world: usize,
        host_store: bool,
        prefix: &str,
        timeout_ms: i64,
    ) -> Result<RawGroup> {
        let (backend, addr, prefix) = (
            c_string(backend, "backend")?,
            c_string(addr, "MASTER_ADDR")?,
            c_string(prefix, "store prefix")?,
        );
        let mut err: *mut c_char = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; the shim owns nothing we pass.
        let raw = unsafe {
            ekphrasis_c10d_new(
                backend.as_ptr(),
                addr.as_ptr(),
                c_int::from(port),
                c_int_of(rank, "RANK")?,
                c_int_of(world, "WORLD_SIZE")?,
                c_int::from(host_store),
                prefix.as_ptr(),
                timeout_ms,
                &mut err,
            )
        };
        if raw.is_null() {
            bail!("{}", take_message(err));
        }
        Ok(RawGroup(raw))
    }

    fn status(&self, rc: c_int, err: *mut c_char) -> Result<()> {
        if rc != 0 {
            bail!("{}", take_message(err));
        }
        Ok(())
    }

    /// `t` must be contiguous and on the backend's device.
    pub fn all_reduce(&self, t: &mut Tensor, op: Reduce) -> Result<()> {
        let op = match op {
            Reduce::Sum => 0,
            Reduce::Max => 1,
        };
        let mut err = std::ptr::null_mut();
        // SAFETY: the group is alive for &self; the tensor handle for &mut t.
        let rc = unsafe { ekphrasis_c10d_all_reduce(self.0, t.as_mut_ptr(), op, &mut err) };
        self.status(rc, err)
    }

    pub fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<()> {
        let mut err = std::ptr::null_mut();
        let root = c_int_of(root, "root rank")?;
        // SAFETY: as in all_reduce.
        let rc = unsafe { ekphrasis_c10d_broadcast(self.0, t.as_mut_ptr(), root, &mut err) };
        self.status(rc, err)
    }

    pub fn all_reduce_grad(&self, t: &Tensor) -> Result<Tensor> {
        let mut err = std::ptr::null_mut();
        // SAFETY: the shim reads the tensor and returns a new one we then own; the group
        // outlives the autograd graph because it lives for the whole process.
        let out = unsafe {
            ekphrasis_c10d_all_reduce_grad(self.0, t.as_ptr() as *mut C_tensor, &mut err)
        };
        if out.is_null() {
            bail!("{}", take_message(err));
        }
        // SAFETY: `out` is a fresh heap `at::Tensor*` whose ownership passes to Rust.
        Ok(unsafe { Tensor::from_ptr(out) })
    }
}

impl Drop for RawGroup {
    fn drop(&mut self) {
        // SAFETY: created by ekphrasis_c10d_new and freed once.
        unsafe { ekphrasis_c10d_free(self.0) };
    }
}
