#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Envoy 1.40's built-in foreign functions (`source/extensions/common/wasm/foreign.cc`), called
//! by the same module in the harness and in a real Envoy: the status and the result bytes
//! (size, FNV-1a hash and the first 32 bytes in hex) of each call must be the same, from the
//! root context (`proxy_on_configure`) and from a stream (`proxy_on_request_headers`).
//! `compress`/`uncompress` are zlib's `compress`/`uncompress` (a zlib stream at level 6), so a
//! module that compresses in Envoy gets the very same bytes here.

mod common;

use common::*;
use wasmesh_envoy::{self as envoy, EnvoyBuilder, HttpRequest, WasmFilter};
use wasmesh_harness::Harness;

/// A protobuf length-delimited field.
fn pb_bytes(field: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![(field << 3) | 2];
    let mut len = value.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(value);
    out
}

/// A protobuf varint field (values below 128).
fn pb_varint(field: u8, value: u8) -> Vec<u8> {
    vec![field << 3, value]
}

/// `DeclarePropertyArguments { name, readonly, type }`.
fn declare(name: &str, readonly: bool, kind: u8) -> Vec<u8> {
    let mut out = pb_bytes(1, name.as_bytes());
    if readonly {
        out.extend(pb_varint(2, 1));
    }
    if kind != 0 {
        out.extend(pb_varint(3, kind));
    }
    out
}

/// `SetEnvoyFilterStateArguments { path, value }`.
fn filter_state(path: &str, value: &str) -> Vec<u8> {
    let mut out = pb_bytes(1, path.as_bytes());
    out.extend(pb_bytes(2, value.as_bytes()));
    out
}

/// Size of the generated large input.
const BIG: u32 = 100 * 1024;

/// The probing module. Every line it logs starts with `FF <phase> <case> `.
fn probe_module() -> String {
    let mut t = Strings::new();
    let mut root = String::new();
    let mut request = String::new();
    let compress = t.s("compress");
    let uncompress = t.s("uncompress");
    // A call whose arguments are literal bytes.
    let call = |t: &mut Strings, out: &mut String, tag: &str, name: &str, args: &[u8]| {
        let tag = t.s(tag);
        let name = t.s(name);
        let args = t.bytes(args);
        out.push_str(&format!("    (call $ff {tag} {name} {args})\n"));
    };
    // Root context.
    call(
        &mut t,
        &mut root,
        "FF root compress_short",
        "compress",
        b"hello",
    );
    call(
        &mut t,
        &mut root,
        "FF root unknown",
        "no_such_function",
        b"x",
    );
    call(
        &mut t,
        &mut root,
        "FF root clear_route_cache",
        "clear_route_cache",
        b"",
    );
    call(
        &mut t,
        &mut root,
        "FF root declare_ro",
        "declare_property",
        &declare("ro", true, 1),
    );
    call(
        &mut t,
        &mut root,
        "FF root declare_ro_again",
        "declare_property",
        &declare("ro", false, 0),
    );
    call(
        &mut t,
        &mut root,
        "FF root declare_rw",
        "declare_property",
        &declare("rw", false, 0),
    );
    call(
        &mut t,
        &mut root,
        "FF root declare_bytes_ro",
        "declare_property",
        &declare("bro", true, 0),
    );
    call(
        &mut t,
        &mut root,
        "FF root declare_garbage",
        "declare_property",
        b"\xff\xff\xff",
    );
    call(
        &mut t,
        &mut root,
        "FF root declare_bad_utf8",
        "declare_property",
        &pb_bytes(1, b"\xff"),
    );
    call(
        &mut t,
        &mut root,
        "FF root filter_state_unknown",
        "set_envoy_filter_state",
        &filter_state("wasmesh.nope", "x"),
    );
    call(
        &mut t,
        &mut root,
        "FF root filter_state_string",
        "set_envoy_filter_state",
        &filter_state("envoy.string", "x"),
    );
    call(
        &mut t,
        &mut root,
        "FF root filter_state_garbage",
        "set_envoy_filter_state",
        b"\xff\xff\xff",
    );
    call(
        &mut t,
        &mut root,
        "FF root expr_evaluate_short",
        "expr_evaluate",
        b"abc",
    );
    call(
        &mut t,
        &mut root,
        "FF root expr_evaluate_missing",
        "expr_evaluate",
        b"\x39\x05\x00\x00",
    );
    call(
        &mut t,
        &mut root,
        "FF root expr_delete",
        "expr_delete",
        b"\x39\x05\x00\x00",
    );
    call(
        &mut t,
        &mut root,
        "FF root expr_delete_short",
        "expr_delete",
        b"ab",
    );
    // Stream context.
    call(
        &mut t,
        &mut request,
        "FF request compress_empty",
        "compress",
        b"",
    );
    request.push_str(&format!(
        "    (call $ff {} {uncompress} (global.get $rp) (global.get $rs))\n",
        t.s("FF request uncompress_empty")
    ));
    call(
        &mut t,
        &mut request,
        "FF request compress_short",
        "compress",
        b"hello hello hello hello, wasm",
    );
    request.push_str(&format!(
        "    (call $ff {} {uncompress} (global.get $rp) (global.get $rs))\n",
        t.s("FF request uncompress_short")
    ));
    request.push_str(&format!(
        "    (call $ff {} {compress} (global.get $big) (i32.const {BIG}))\n",
        t.s("FF request compress_big")
    ));
    request.push_str(&format!(
        "    (global.set $keep_p (global.get $rp)) (global.set $keep_s (global.get $rs))\n    (call $ff {} {uncompress} (global.get $rp) (global.get $rs))\n",
        t.s("FF request uncompress_big")
    ));
    // The big stream missing its last 4 bytes (the Adler-32), then with garbage after it.
    request.push_str(&format!(
        "    (call $ff {} {uncompress} (global.get $keep_p) (i32.sub (global.get $keep_s) (i32.const 4)))\n",
        t.s("FF request uncompress_truncated")
    ));
    request.push_str(&format!(
        "    (call $ff {} {uncompress} (global.get $keep_p) (i32.sub (global.get $keep_s) (i32.const 200)))\n",
        t.s("FF request uncompress_half")
    ));
    let zeros = {
        let mut out = vec![0u8; 2048];
        let (packed, _) =
            zlib_rs::compress_slice(&mut out, &[0u8; 300_000], zlib_rs::DeflateConfig::default());
        packed.to_vec()
    };
    call(
        &mut t,
        &mut request,
        "FF request uncompress_high_ratio",
        "uncompress",
        &zeros,
    );
    let mut trailing = zeros.clone();
    trailing.extend_from_slice(b"trailing");
    call(
        &mut t,
        &mut request,
        "FF request uncompress_trailing",
        "uncompress",
        &trailing,
    );
    let mut bad_check = zeros.clone();
    if let Some(last) = bad_check.last_mut() {
        *last ^= 1;
    }
    call(
        &mut t,
        &mut request,
        "FF request uncompress_bad_checksum",
        "uncompress",
        &bad_check,
    );
    call(
        &mut t,
        &mut request,
        "FF request uncompress_garbage",
        "uncompress",
        b"this is not zlib data",
    );
    call(
        &mut t,
        &mut request,
        "FF request uncompress_nothing",
        "uncompress",
        b"",
    );
    call(
        &mut t,
        &mut request,
        "FF request unknown",
        "no_such_function",
        b"x",
    );
    call(
        &mut t,
        &mut request,
        "FF request unknown_case",
        "Compress",
        b"x",
    );
    call(
        &mut t,
        &mut request,
        "FF request clear_route_cache",
        "clear_route_cache",
        b"anything",
    );
    // Declared in the root context: `ro` is read-only, `rw` is not, `bro` read-only bytes.
    for (tag, key, value) in [
        ("set_ro_1", "ro", "first"),
        ("set_ro_2", "ro", "second"),
        ("set_rw_1", "rw", "first"),
        ("set_rw_2", "rw", "second"),
        ("set_bro_1", "bro", "first"),
        ("set_bro_2", "bro", "second"),
        ("set_plain_1", "plain", "first"),
        ("set_plain_2", "plain", "second"),
    ] {
        request.push_str(&format!(
            "    (call $set {} {} {})\n",
            t.s(&format!("FF request {tag}")),
            t.s(key),
            t.s(value)
        ));
    }
    for key in ["ro", "rw", "bro", "plain"] {
        request.push_str(&format!(
            "    (call $get {} {})\n",
            t.s(&format!("FF request get_{key}")),
            t.path(&[key])
        ));
    }
    request.push_str(&format!(
        "    (call $get {} {})\n",
        t.s("FF request get_filter_state_ro"),
        t.path(&["filter_state", "wasm.ro"])
    ));
    // A declaration from a stream context is the stream's own: `ro` again is fine there.
    call(
        &mut t,
        &mut request,
        "FF request declare_s",
        "declare_property",
        &declare("s", true, 0),
    );
    call(
        &mut t,
        &mut request,
        "FF request declare_s_again",
        "declare_property",
        &declare("s", true, 0),
    );
    call(
        &mut t,
        &mut request,
        "FF request declare_ro",
        "declare_property",
        &declare("ro", true, 0),
    );
    request.push_str(&format!(
        "    (call $set {} {} {})\n    (call $set {} {} {})\n",
        t.s("FF request set_s_1"),
        t.s("s"),
        t.s("one"),
        t.s("FF request set_s_2"),
        t.s("s"),
        t.s("two"),
    ));
    call(
        &mut t,
        &mut request,
        "FF request declare_garbage",
        "declare_property",
        b"\xff\xff\xff",
    );
    call(
        &mut t,
        &mut request,
        "FF request filter_state_unknown",
        "set_envoy_filter_state",
        &filter_state("wasmesh.nope", "x"),
    );
    call(
        &mut t,
        &mut request,
        "FF request filter_state_garbage",
        "set_envoy_filter_state",
        b"\xff\xff\xff",
    );
    call(
        &mut t,
        &mut request,
        "FF request filter_state_string",
        "set_envoy_filter_state",
        &filter_state("envoy.string", "hello"),
    );
    for (tag, path) in [
        ("get_envoy_string", vec!["filter_state", "envoy.string"]),
        ("get_envoy_string_top", vec!["envoy.string"]),
    ] {
        request.push_str(&format!(
            "    (call $get {} {})\n",
            t.s(&format!("FF request {tag}")),
            t.path(&path)
        ));
    }
    call(&mut t, &mut request, "FF request sign_no_key", "sign", b"");
    call(
        &mut t,
        &mut request,
        "FF request sign_garbage",
        "sign",
        b"\xff\xff\xff",
    );
    call(
        &mut t,
        &mut request,
        "FF request sign_both_keys",
        "sign",
        &[pb_bytes(2, b"der"), pb_bytes(4, b"pem")].concat(),
    );
    call(
        &mut t,
        &mut request,
        "FF request verify_no_key",
        "verify_signature",
        &pb_bytes(1, b"sha256"),
    );
    call(
        &mut t,
        &mut request,
        "FF request verify_garbage",
        "verify_signature",
        b"\xff\xff\xff",
    );
    // Not emulated (no CEL here): compared separately below.
    call(
        &mut t,
        &mut request,
        "FF request expr_create",
        "expr_create",
        b"1 + 1",
    );
    call(
        &mut t,
        &mut request,
        "FF request expr_evaluate_short",
        "expr_evaluate",
        b"abc",
    );
    call(
        &mut t,
        &mut request,
        "FF request expr_evaluate_missing",
        "expr_evaluate",
        b"\x39\x05\x00\x00",
    );
    call(
        &mut t,
        &mut request,
        "FF request expr_delete",
        "expr_delete",
        b"\x39\x05\x00\x00",
    );
    call(
        &mut t,
        &mut request,
        "FF request expr_delete_long",
        "expr_delete",
        b"abcde",
    );
    module(&format!(
        r#"{data}
  (global $rp (mut i32) (i32.const 0))
  (global $rs (mut i32) (i32.const 0))
  (global $keep_p (mut i32) (i32.const 0))
  (global $keep_s (mut i32) (i32.const 0))
  (global $big (mut i32) (i32.const 0))
  (func $hex (param $n i32) (result i32)
    (i32.add (local.get $n) (select (i32.const 48) (i32.const 87) (i32.lt_u (local.get $n) (i32.const 10)))))
  ;; Logs "<tag> rc=<rc> size=<size> fnv=<fnv-1a> head=<hex of up to 32 bytes>" for the result
  ;; the host wrote at RET_PTR/RET_SIZE, and keeps it in $rp/$rs.
  (func $report (param $tag i32) (param $taglen i32) (param $rc i32)
    (local $p i32) (local $i i32) (local $b i32) (local $h i32) (local $n i32)
    (global.set $rp (i32.load (i32.const 512)))
    (global.set $rs (i32.load (i32.const 516)))
    (memory.copy (i32.const 60000) (local.get $tag) (local.get $taglen))
    (local.set $p (i32.add (i32.const 60000) (local.get $taglen)))
    (i32.store (local.get $p) (i32.const 0x3d637220)) ;; " rc="
    (local.set $p (i32.add (local.get $p) (i32.const 4)))
    (local.set $p (i32.add (local.get $p) (call $itoa (local.get $rc) (local.get $p))))
    (i64.store (local.get $p) (i64.const 0x3d657a697320)) ;; " size="
    (local.set $p (i32.add (local.get $p) (i32.const 6)))
    (local.set $p (i32.add (local.get $p) (call $itoa (global.get $rs) (local.get $p))))
    (i64.store (local.get $p) (i64.const 0x3d766e6620)) ;; " fnv="
    (local.set $p (i32.add (local.get $p) (i32.const 5)))
    (local.set $h (i32.const 0x811c9dc5))
    (local.set $i (i32.const 0))
    (block $done (loop $hash
      (br_if $done (i32.ge_u (local.get $i) (global.get $rs)))
      (local.set $h (i32.mul (i32.xor (local.get $h) (i32.load8_u (i32.add (global.get $rp) (local.get $i)))) (i32.const 0x01000193)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $hash)))
    (local.set $p (i32.add (local.get $p) (call $itoa (local.get $h) (local.get $p))))
    (i64.store (local.get $p) (i64.const 0x3d6461656820)) ;; " head="
    (local.set $p (i32.add (local.get $p) (i32.const 6)))
    (local.set $n (select (global.get $rs) (i32.const 32) (i32.lt_u (global.get $rs) (i32.const 32))))
    (local.set $i (i32.const 0))
    (block $end (loop $bytes
      (br_if $end (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $b (i32.load8_u (i32.add (global.get $rp) (local.get $i))))
      (i32.store8 (local.get $p) (call $hex (i32.shr_u (local.get $b) (i32.const 4))))
      (i32.store8 (i32.add (local.get $p) (i32.const 1)) (call $hex (i32.and (local.get $b) (i32.const 15))))
      (local.set $p (i32.add (local.get $p) (i32.const 2)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $bytes)))
    (call $info (i32.const 60000) (i32.sub (local.get $p) (i32.const 60000))))
  (func $ff (param $tag i32) (param $taglen i32) (param $name i32) (param $namelen i32) (param $args i32) (param $argslen i32)
    (i32.store (i32.const 512) (i32.const 0))
    (i32.store (i32.const 516) (i32.const 0))
    (call $report (local.get $tag) (local.get $taglen)
      (call $proxy_call_foreign_function (local.get $name) (local.get $namelen) (local.get $args) (local.get $argslen) (i32.const 512) (i32.const 516))))
  (func $set (param $tag i32) (param $taglen i32) (param $key i32) (param $keylen i32) (param $value i32) (param $valuelen i32)
    (i32.store (i32.const 512) (i32.const 0))
    (i32.store (i32.const 516) (i32.const 0))
    (call $report (local.get $tag) (local.get $taglen)
      (call $proxy_set_property (local.get $key) (local.get $keylen) (local.get $value) (local.get $valuelen))))
  (func $get (param $tag i32) (param $taglen i32) (param $path i32) (param $pathlen i32)
    (i32.store (i32.const 512) (i32.const 0))
    (i32.store (i32.const 516) (i32.const 0))
    (call $report (local.get $tag) (local.get $taglen)
      (call $proxy_get_property (local.get $path) (local.get $pathlen) (i32.const 512) (i32.const 516))))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
{root}    (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $i i32)
    (global.set $big (call $malloc (i32.const {BIG})))
    (loop $fill
      (i32.store8 (i32.add (global.get $big) (local.get $i))
        (i32.xor (i32.rem_u (local.get $i) (i32.const 251)) (i32.shr_u (i32.mul (local.get $i) (local.get $i)) (i32.const 17))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $fill (i32.lt_u (local.get $i) (i32.const {BIG}))))
{request}    (i32.const 0))"#,
        data = t.data(),
    ))
}

/// The module's `FF` lines, in order, each once (Envoy configures several root contexts).
fn ff_lines(lines: impl Iterator<Item = String>) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for line in lines {
        if let Some(index) = line.find("FF ") {
            let rest = line[index..].trim().to_string();
            if !found.contains(&rest) {
                found.push(rest);
            }
        }
    }
    found
}

fn harness_lines(bytes: &[u8]) -> Vec<String> {
    let plugin = Harness::from_bytes(bytes).unwrap().start().unwrap();
    plugin.http_stream().request_headers(GET, true).unwrap();
    ff_lines(messages(&plugin).into_iter())
}

/// The module's lines in Envoy (the module written to `<name>.wasm`), once one starting with
/// `last` is there.
fn envoy_lines(name: &str, bytes: &[u8], last: &str) -> Vec<String> {
    let file = WasmFile::new(name, bytes);
    let envoy = EnvoyBuilder::new()
        .wasm_filter(WasmFilter::new(&file.path))
        .direct_response(200, "ok")
        .start()
        .unwrap();
    assert_eq!(envoy.send(&HttpRequest::get("/")).unwrap().status, 200);
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = ff_lines(envoy.log().lines().map(str::to_string));
        if lines.iter().any(|l| l.starts_with(last)) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    lines
}

/// `expr_create` compiles a CEL expression: Envoy answers a 4-byte token, the harness, which
/// has no CEL, `Unimplemented` (12). The one line where the two differ on purpose.
fn set_aside_expr_create(lines: &mut Vec<String>) -> Option<String> {
    let index = lines
        .iter()
        .position(|l| l.starts_with("FF request expr_create "))?;
    Some(lines.remove(index))
}

#[test]
fn built_in_foreign_functions_answer_as_in_envoy() {
    if envoy::skip_requested() {
        return;
    }
    let bytes = wat::parse_str(probe_module()).unwrap();
    let mut envoy = envoy_lines("foreign-functions", &bytes, "FF request expr_delete_long");
    let mut harness = harness_lines(&bytes);
    let envoy_expr = set_aside_expr_create(&mut envoy).unwrap();
    assert!(
        envoy_expr.starts_with("FF request expr_create rc=0 size=4 "),
        "{envoy_expr}"
    );
    let harness_expr = set_aside_expr_create(&mut harness).unwrap();
    assert!(
        harness_expr.starts_with("FF request expr_create rc=12 size=0 "),
        "{harness_expr}"
    );
    assert_same(&envoy, &harness);
}

/// A module calling `compress` and `uncompress` (and an unknown name) written with the
/// `proxy-wasm` crate alone (`harness/e2e/modules/rust/compress`, crate
/// `wasmesh-e2e-compress-rust`): the same lines, from the root context and from a request.
#[test]
fn compress_module_in_rust_answers_as_in_envoy() {
    if envoy::skip_requested() {
        return;
    }
    let path = wasmesh_harness::build::wasm("wasmesh-e2e-compress-rust").unwrap();
    let bytes = std::fs::read(path).unwrap();
    let envoy = envoy_lines("foreign-functions-rust", &bytes, "FF request done ");
    let harness = harness_lines(&bytes);
    eprintln!("envoy: {envoy:#?}");
    // The round trip gives the input back, an unknown name is NotFound (1).
    assert!(
        envoy
            .iter()
            .any(|l| l.starts_with("FF root uncompress_short rc=0 size=5 ")),
        "{envoy:#?}"
    );
    assert!(
        envoy
            .iter()
            .any(|l| l.starts_with("FF request unknown rc=1 size=0 ")),
        "{envoy:#?}"
    );
    assert_same(&envoy, &harness);
}

/// Asserts the two sides logged the same lines, showing them side by side where they differ.
fn assert_same(envoy: &[String], harness: &[String]) {
    let report = envoy
        .iter()
        .zip(harness.iter().chain(std::iter::repeat(&String::new())))
        .map(|(e, h)| {
            if e == h {
                format!("  same     {e}\n")
            } else {
                format!("  envoy    {e}\n  harness  {h}\n")
            }
        })
        .collect::<String>();
    assert_eq!(envoy, harness, "\n{report}");
}

/// A function the test registers replaces the built-in of that name; the others stay.
#[test]
fn a_registered_function_overrides_the_built_in() {
    let bytes = wat::parse_str(probe_module()).unwrap();
    let plugin = Harness::from_bytes(&bytes)
        .unwrap()
        .foreign_function("compress", |args| Ok(args.to_vec()))
        .start()
        .unwrap();
    let mut stream = plugin.http_stream();
    stream.request_headers(GET, true).unwrap();
    let lines = ff_lines(messages(&plugin).into_iter());
    let line = |prefix: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(prefix))
            .cloned()
            .unwrap_or_default()
    };
    // "hello" back as it was, not zlib's 789c... .
    assert!(
        line("FF root compress_short ").ends_with("rc=0 size=5 fnv=1335831723 head=68656c6c6f"),
        "{lines:#?}"
    );
    // uncompress is still Envoy's: the "compressed" bytes are not a zlib stream.
    assert!(
        line("FF request uncompress_short ").starts_with("FF request uncompress_short rc=3 "),
        "{lines:#?}"
    );
    assert_eq!(stream.route_cache_clears(), 1);
}
