//! The WASI preview1 subset Envoy implements itself (proxy-wasm-cpp-host `exports.cc`), with
//! the same results: stdout/stderr become logs, there is no file system, clocks are the
//! virtual clock, randomness is deterministic, the environment is what the test configured.
//!
//! Registered under both `wasi_snapshot_preview1` and `wasi_unstable`, as Envoy does.
//!
//! Every WASI preview1 function Envoy 1.40 provides is here, answering as Envoy does (measured:
//! `tests/wasi_vs_envoy.rs`); Envoy lacks `path_link`, `path_symlink` and `proc_raise`, and a
//! module importing them loads in neither. While `_initialize`/`_start` run, Envoy 1.40 refuses
//! `fd_read`, `fd_seek`, `fd_close`, `path_open`, `sched_yield` and `proc_exit` (V8 throws
//! `restricted_callback`, the VM fails to initialize and the plugin does not load); every other
//! function answers there as it does per request. Go's runtime relies on this: it calls
//! `fd_fdstat_get`, `fd_fdstat_set_flags` and `fd_prestat_get` from `_initialize`.

use wasmtime::Caller;

use crate::error::HarnessError;
use crate::hostcalls::{
    charge, charge_fuel, guard, read_bytes, write_bytes, write_u32, write_u64, HostResult,
    Registrar,
};
use crate::types::LogLevel;
use crate::vm::VmState;

const SUCCESS: u32 = 0;
const BADF: u32 = 8;
const EXIST: u32 = 20;
const FAULT: u32 = 21;
const INVAL: u32 = 28;
const NOENT: u32 = 44;
const NOSYS: u32 = 52;
const NOTSUP: u32 = 58;

/// proxy-wasm-cpp-host's `PROXY_WASM_HOST_WASI_RANDOM_GET_MAX_SIZE_BYTES`.
const RANDOM_GET_MAX_BYTES: u32 = 64 * 1024;

pub(crate) fn register(r: &mut Registrar<'_>, module: &str) -> Result<(), HarnessError> {
    r.func(module, "fd_write", fd_write)?;
    r.func(
        module,
        "fd_read",
        |mut c: Caller<'_, VmState>, _: u32, _: u32, _: u32, _: u32| {
            restricted(&mut c, "fd_read").map(|()| NOSYS)
        },
    )?;
    r.func(
        module,
        "fd_seek",
        |mut c: Caller<'_, VmState>, _: u32, _: i64, _: u32, _: u32| {
            // Envoy reports success without touching the result.
            restricted(&mut c, "fd_seek").map(|()| SUCCESS)
        },
    )?;
    r.func(module, "fd_close", |mut c: Caller<'_, VmState>, _: u32| {
        restricted(&mut c, "fd_close").map(|()| SUCCESS)
    })?;
    r.func(module, "fd_fdstat_get", fd_fdstat_get)?;
    r.func(
        module,
        "fd_fdstat_set_flags",
        |mut c: Caller<'_, VmState>, _: u32, _: u32| {
            charge(&mut c, "fd_fdstat_set_flags").map(|()| NOSYS)
        },
    )?;
    r.func(
        module,
        "fd_filestat_get",
        |mut c: Caller<'_, VmState>, _: u32, _: u32| {
            charge(&mut c, "fd_filestat_get").map(|()| BADF)
        },
    )?;
    // No preopened directories: libc's preopen scan stops at the first BADF.
    r.func(
        module,
        "fd_prestat_get",
        |mut c: Caller<'_, VmState>, _: u32, _: u32| {
            charge(&mut c, "fd_prestat_get").map(|()| BADF)
        },
    )?;
    r.func(
        module,
        "fd_prestat_dir_name",
        |mut c: Caller<'_, VmState>, _: u32, _: u32, _: u32| {
            charge(&mut c, "fd_prestat_dir_name").map(|()| NOSYS)
        },
    )?;
    r.func(
        module,
        "path_open",
        |mut c: Caller<'_, VmState>,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: i64,
         _: i64,
         _: u32,
         _: u32| { restricted(&mut c, "path_open").map(|()| NOENT) },
    )?;
    r.func(
        module,
        "path_filestat_get",
        |mut c: Caller<'_, VmState>, _: u32, _: u32, _: u32, _: u32, _: u32| {
            charge(&mut c, "path_filestat_get").map(|()| NOTSUP)
        },
    )?;
    r.func(module, "environ_sizes_get", environ_sizes_get)?;
    r.func(module, "environ_get", environ_get)?;
    r.func(module, "args_sizes_get", args_sizes_get)?;
    r.func(
        module,
        "args_get",
        |mut c: Caller<'_, VmState>, _: u32, _: u32| charge(&mut c, "args_get").map(|()| SUCCESS),
    )?;
    r.func(module, "clock_time_get", clock_time_get)?;
    r.func(module, "clock_res_get", clock_res_get)?;
    r.func(module, "random_get", random_get)?;
    r.func(module, "proc_exit", proc_exit)?;
    r.func(module, "sched_yield", |mut c: Caller<'_, VmState>| {
        restricted(&mut c, "sched_yield").map(|()| SUCCESS)
    })?;
    r.func(module, "poll_oneoff", poll_oneoff)?;
    register_more(r, module)
}

/// Functions Envoy 1.40 also provides, each answering one code and writing zeros to its out
/// parameter (measured: `tests/wasi_vs_envoy.rs`); all allowed while the module starts. Envoy
/// does not provide `path_link`, `path_symlink` or `proc_raise`: a module importing them does
/// not load there, nor here.
fn register_more(r: &mut Registrar<'_>, module: &str) -> Result<(), HarnessError> {
    r.func(
        module,
        "fd_advise",
        |mut c: Caller<'_, VmState>, _: u32, _: i64, _: i64, _: u32| {
            charge(&mut c, "fd_advise").map(|()| SUCCESS)
        },
    )?;
    r.func(
        module,
        "fd_allocate",
        |mut c: Caller<'_, VmState>, _: u32, _: i64, _: i64| {
            charge(&mut c, "fd_allocate").map(|()| SUCCESS)
        },
    )?;
    r.func(
        module,
        "fd_datasync",
        |mut c: Caller<'_, VmState>, _: u32| charge(&mut c, "fd_datasync").map(|()| SUCCESS),
    )?;
    r.func(module, "fd_sync", |mut c: Caller<'_, VmState>, _: u32| {
        charge(&mut c, "fd_sync").map(|()| SUCCESS)
    })?;
    r.func(
        module,
        "fd_fdstat_set_rights",
        |mut c: Caller<'_, VmState>, _: u32, _: i64, _: i64| {
            charge(&mut c, "fd_fdstat_set_rights").map(|()| SUCCESS)
        },
    )?;
    r.func(
        module,
        "fd_filestat_set_size",
        |mut c: Caller<'_, VmState>, _: u32, _: i64| {
            charge(&mut c, "fd_filestat_set_size").map(|()| SUCCESS)
        },
    )?;
    r.func(
        module,
        "fd_filestat_set_times",
        |mut c: Caller<'_, VmState>, _: u32, _: i64, _: i64, _: u32| {
            charge(&mut c, "fd_filestat_set_times").map(|()| SUCCESS)
        },
    )?;
    r.func(
        module,
        "fd_pread",
        |mut c: Caller<'_, VmState>, _: u32, _: u32, _: u32, _: i64, _: u32| {
            charge(&mut c, "fd_pread").map(|()| NOSYS)
        },
    )?;
    // Answers as `fd_write` does (the offset is ignored).
    r.func(
        module,
        "fd_pwrite",
        |c: Caller<'_, VmState>, fd: u32, iovs: u32, iovs_len: u32, _: i64, nwritten: u32| {
            write_iovecs(c, "fd_pwrite", fd, iovs, iovs_len, nwritten)
        },
    )?;
    r.func(
        module,
        "fd_readdir",
        |mut c: Caller<'_, VmState>, _: u32, _: u32, _: u32, _: i64, bufused: u32| {
            charge(&mut c, "fd_readdir")?;
            Ok(zeros(&mut c, bufused, 4, EXIST))
        },
    )?;
    r.func(
        module,
        "fd_renumber",
        |mut c: Caller<'_, VmState>, _: u32, _: u32| charge(&mut c, "fd_renumber").map(|()| BADF),
    )?;
    r.func(
        module,
        "fd_tell",
        |mut c: Caller<'_, VmState>, _: u32, offset: u32| {
            charge(&mut c, "fd_tell")?;
            Ok(zeros(&mut c, offset, 8, SUCCESS))
        },
    )?;
    for name in [
        "path_create_directory",
        "path_remove_directory",
        "path_unlink_file",
    ] {
        r.func(
            module,
            name,
            move |mut c: Caller<'_, VmState>, _: u32, _: u32, _: u32| {
                charge(&mut c, name).map(|()| NOTSUP)
            },
        )?;
    }
    r.func(
        module,
        "path_filestat_set_times",
        |mut c: Caller<'_, VmState>, _: u32, _: u32, _: u32, _: u32, _: i64, _: i64, _: u32| {
            charge(&mut c, "path_filestat_set_times").map(|()| NOTSUP)
        },
    )?;
    r.func(
        module,
        "path_readlink",
        |mut c: Caller<'_, VmState>, _: u32, _: u32, _: u32, _: u32, _: u32, bufused: u32| {
            charge(&mut c, "path_readlink")?;
            Ok(zeros(&mut c, bufused, 4, NOTSUP))
        },
    )?;
    r.func(
        module,
        "path_rename",
        |mut c: Caller<'_, VmState>, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32| {
            charge(&mut c, "path_rename").map(|()| NOTSUP)
        },
    )?;
    r.func(
        module,
        "sock_accept",
        |mut c: Caller<'_, VmState>, _: u32, _: u32, fd: u32| {
            charge(&mut c, "sock_accept")?;
            Ok(zeros(&mut c, fd, 8, NOTSUP))
        },
    )?;
    r.func(
        module,
        "sock_recv",
        |mut c: Caller<'_, VmState>, _: u32, _: u32, _: u32, _: u32, datalen: u32, flags: u32| {
            charge(&mut c, "sock_recv")?;
            let code = zeros(&mut c, datalen, 4, NOTSUP);
            Ok(if code == FAULT {
                code
            } else {
                zeros(&mut c, flags, 2, NOTSUP)
            })
        },
    )?;
    r.func(
        module,
        "sock_send",
        |mut c: Caller<'_, VmState>, _: u32, _: u32, _: u32, _: u32, datalen: u32| {
            charge(&mut c, "sock_send")?;
            Ok(zeros(&mut c, datalen, 4, NOTSUP))
        },
    )?;
    r.func(
        module,
        "sock_shutdown",
        |mut c: Caller<'_, VmState>, _: u32, _: u32| {
            charge(&mut c, "sock_shutdown").map(|()| NOTSUP)
        },
    )?;
    Ok(())
}

/// Writes `len` zero bytes at `ptr` and answers `code` (`EFAULT` when `ptr` is out of bounds).
fn zeros(caller: &mut Caller<'_, VmState>, ptr: u32, len: usize, code: u32) -> u32 {
    if write_bytes(caller, ptr, &vec![0; len]) {
        code
    } else {
        FAULT
    }
}

fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let raw: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_le_bytes(raw))
}

fn restricted(caller: &mut Caller<'_, VmState>, name: &str) -> HostResult<()> {
    guard(caller, name)
}

/// stdout is logged at info, stderr at error, one trailing newline removed (Envoy's `writevImpl`).
fn fd_write(
    caller: Caller<'_, VmState>,
    fd: u32,
    iovs: u32,
    iovs_len: u32,
    nwritten_ptr: u32,
) -> HostResult<u32> {
    write_iovecs(caller, "fd_write", fd, iovs, iovs_len, nwritten_ptr)
}

/// `fd_write`, and `fd_pwrite` which Envoy answers the same way.
fn write_iovecs(
    mut caller: Caller<'_, VmState>,
    hostcall: &str,
    fd: u32,
    iovs: u32,
    iovs_len: u32,
    nwritten_ptr: u32,
) -> HostResult<u32> {
    charge(&mut caller, hostcall)?;
    let level = match fd {
        1 => LogLevel::Info,
        2 => LogLevel::Error,
        _ => return Ok(BADF),
    };
    let mut text = Vec::new();
    for index in 0..iovs_len {
        // Charged per vector: many vectors pointing at the same large buffer would otherwise
        // build an arbitrarily large message in one call.
        charge_fuel(&mut caller)?;
        let Some(iovec) = index
            .checked_mul(8)
            .and_then(|offset| iovs.checked_add(offset))
            .and_then(|at| read_bytes(&caller, at, 8))
        else {
            return Ok(FAULT);
        };
        let (Some(buf), Some(buf_len)) = (le_u32(&iovec, 0), le_u32(&iovec, 4)) else {
            return Ok(FAULT);
        };
        if buf_len != 0 {
            let Some(bytes) = read_bytes(&caller, buf, buf_len) else {
                return Ok(FAULT);
            };
            text.extend_from_slice(&bytes);
        }
    }
    let written = u32::try_from(text.len()).unwrap_or(u32::MAX);
    if !text.is_empty() {
        if text.last() == Some(&b'\n') {
            text.pop();
        }
        caller
            .data()
            .log(level, String::from_utf8_lossy(&text).into_owned());
    }
    if !write_u32(&mut caller, nwritten_ptr, written) {
        return Ok(FAULT);
    }
    Ok(SUCCESS)
}

fn fd_fdstat_get(mut caller: Caller<'_, VmState>, fd: u32, stat_ptr: u32) -> HostResult<u32> {
    charge(&mut caller, "fd_fdstat_get")?;
    if fd != 1 && fd != 2 {
        return Ok(BADF);
    }
    // 24-byte fdstat, zeroed except fs_rights_base = FD_WRITE (64). Envoy ignores a failed
    // write here and still reports success.
    let mut stat = [0u8; 24];
    if let Some(rights_base) = stat.get_mut(8) {
        *rights_base = 64;
    }
    write_bytes(&mut caller, stat_ptr, &stat);
    Ok(SUCCESS)
}

fn envs(caller: &Caller<'_, VmState>) -> Vec<(String, String)> {
    caller
        .data()
        .shared
        .try_borrow()
        .map(|s| s.settings.envs.clone())
        .unwrap_or_default()
}

fn environ_sizes_get(
    mut caller: Caller<'_, VmState>,
    count_ptr: u32,
    size_ptr: u32,
) -> HostResult<u32> {
    charge(&mut caller, "environ_sizes_get")?;
    let envs = envs(&caller);
    let count = u32::try_from(envs.len()).unwrap_or(u32::MAX);
    // key + '=' + value + NUL per variable.
    let size: usize = envs.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let size = u32::try_from(size).unwrap_or(u32::MAX);
    if !(write_u32(&mut caller, count_ptr, count) && write_u32(&mut caller, size_ptr, size)) {
        return Ok(FAULT);
    }
    Ok(SUCCESS)
}

fn environ_get(mut caller: Caller<'_, VmState>, array_ptr: u32, buf_ptr: u32) -> HostResult<u32> {
    charge(&mut caller, "environ_get")?;
    let mut array = array_ptr;
    let mut buf = buf_ptr;
    for (key, value) in envs(&caller) {
        let mut entry = Vec::with_capacity(key.len() + value.len() + 2);
        entry.extend_from_slice(key.as_bytes());
        entry.push(b'=');
        entry.extend_from_slice(value.as_bytes());
        entry.push(0);
        if !write_u32(&mut caller, array, buf) || !write_bytes(&mut caller, buf, &entry) {
            return Ok(FAULT);
        }
        let Some(next_buf) = u32::try_from(entry.len())
            .ok()
            .and_then(|l| buf.checked_add(l))
        else {
            return Ok(FAULT);
        };
        buf = next_buf;
        array = array.wrapping_add(4);
    }
    Ok(SUCCESS)
}

fn args_sizes_get(
    mut caller: Caller<'_, VmState>,
    argc_ptr: u32,
    size_ptr: u32,
) -> HostResult<u32> {
    charge(&mut caller, "args_sizes_get")?;
    // Zero arguments, so that args_get is never needed.
    if !(write_u32(&mut caller, argc_ptr, 0) && write_u32(&mut caller, size_ptr, 0)) {
        return Ok(FAULT);
    }
    Ok(SUCCESS)
}

fn clock_time_get(
    mut caller: Caller<'_, VmState>,
    clock_id: u32,
    _precision: i64,
    time_ptr: u32,
) -> HostResult<u32> {
    charge(&mut caller, "clock_time_get")?;
    let now = {
        let Ok(shared) = caller.data().shared.try_borrow() else {
            return Ok(FAULT);
        };
        match clock_id {
            0 => shared.clock.realtime_nanos(),
            1 => shared.clock.monotonic_nanos(),
            _ => return Ok(NOTSUP),
        }
    };
    if !write_u64(&mut caller, time_ptr, now) {
        return Ok(FAULT);
    }
    Ok(SUCCESS)
}

fn clock_res_get(mut caller: Caller<'_, VmState>, clock_id: u32, res_ptr: u32) -> HostResult<u32> {
    charge(&mut caller, "clock_res_get")?;
    if clock_id > 1 {
        return Ok(NOTSUP);
    }
    if !write_u64(&mut caller, res_ptr, 1) {
        return Ok(FAULT);
    }
    Ok(SUCCESS)
}

fn random_get(mut caller: Caller<'_, VmState>, buf_ptr: u32, buf_len: u32) -> HostResult<u32> {
    charge(&mut caller, "random_get")?;
    if buf_len > RANDOM_GET_MAX_BYTES {
        return Ok(INVAL);
    }
    if buf_len == 0 {
        return Ok(SUCCESS);
    }
    let mut bytes = vec![0u8; buf_len as usize];
    if let Ok(mut shared) = caller.data().shared.try_borrow_mut() {
        shared.fill_random(&mut bytes);
    }
    if !write_bytes(&mut caller, buf_ptr, &bytes) {
        return Ok(FAULT);
    }
    Ok(SUCCESS)
}

/// Envoy only notes the call and returns; the module's libc then traps on its own
/// `unreachable`, which fails the VM like any other trap.
fn proc_exit(mut caller: Caller<'_, VmState>, _code: u32) -> HostResult<()> {
    restricted(&mut caller, "proc_exit")
}

fn poll_oneoff(
    mut caller: Caller<'_, VmState>,
    _in: u32,
    _out: u32,
    _subscriptions: u32,
    nevents_ptr: u32,
) -> HostResult<u32> {
    charge(&mut caller, "poll_oneoff")?;
    // No event polling: report zero events.
    if !write_u32(&mut caller, nevents_ptr, 0) {
        return Ok(FAULT);
    }
    Ok(SUCCESS)
}
