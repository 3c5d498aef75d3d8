// The differential corpus's probe module, built with AssemblyScript and @solo-io/proxy-runtime.
// It does exactly what the Rust and Go probes do, driven by request headers; see
// harness/e2e/README.md, "Foreign modules".

export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext, Context, BaseContext, registerRootContext, stream_context, send_local_response,
  continue_request, Counter, HeaderPair, Headers,
  FilterHeadersStatusValues, FilterDataStatusValues, GrpcStatusValues, WasmResultValues,
} from "@solo-io/proxy-runtime";
import { get_buffer_bytes } from "@solo-io/proxy-runtime/runtime";
import { proxy_call_foreign_function } from "@solo-io/proxy-runtime/imports";

// BufferType HttpCallResponseBody (the runtime does not export the enum).
const HTTP_CALL_RESPONSE_BODY = 4;

let requests: Counter | null = null;

function pair(name: string, value: string): HeaderPair {
  return new HeaderPair(String.UTF8.encode(name), String.UTF8.encode(value));
}

function reply(status: u32, body: string, headers: Headers): void {
  send_local_response(status, "", String.UTF8.encode(body), headers, GrpcStatusValues.InvalidCode);
}

function onCalloutResponse(origin: Context, headers: u32, bodySize: usize, trailers: u32): void {
  const answer = stream_context.headers.http_callback;
  const status = answer.get(":status");
  const grpcStatus = answer.get("grpc-status");
  let body = "";
  if (bodySize > 0) {
    body = String.UTF8.decode(get_buffer_bytes(HTTP_CALL_RESPONSE_BODY, 0, bodySize as u32));
  }
  const serviceTime = answer.get("x-envoy-upstream-service-time") == "" ? "absent" : "present";
  const result = "status=" + status + " grpc-status=" + grpcStatus + " grpc-message=" +
    answer.get("grpc-message") + " service-time=" + serviceTime + " body=" + body;
  if (status == "200" && grpcStatus == "") {
    stream_context.headers.request.add("x-probe-callout", result);
    continue_request();
    return;
  }
  reply(403, result + "\n", []);
}

// Where the last foreign function call left its result (in memory the host allocated).
let foreignPointer: usize = 0;
let foreignSize: u32 = 0;

// Calls one of the host's foreign functions; returns its status (0: Ok).
function callForeign(name: string, args: ArrayBuffer): u32 {
  const nameBytes = String.UTF8.encode(name);
  const out = new ArrayBuffer(8);
  const outPointer = changetype<usize>(out);
  store<u32>(outPointer, 0);
  store<u32>(outPointer + 4, 0);
  const status = proxy_call_foreign_function(changetype<usize>(nameBytes), nameBytes.byteLength,
    changetype<usize>(args), args.byteLength, outPointer, outPointer + 4) as u32;
  foreignPointer = load<u32>(outPointer) as usize;
  foreignSize = load<u32>(outPointer + 4);
  return status;
}

// "<function> ok <result in hex>" or "<function> error <status code>".
function foreignLine(name: string, args: ArrayBuffer): string {
  const status = callForeign(name, args);
  if (status != 0) {
    return name + " error " + status.toString() + "\n";
  }
  const digits = "0123456789abcdef";
  let hex = "";
  for (let i: u32 = 0; i < foreignSize; i++) {
    const byte = load<u8>(foreignPointer + i);
    hex += digits.charAt(byte >> 4) + digits.charAt(byte & 15);
  }
  return name + " ok " + hex + "\n";
}

class ProbeRoot extends RootContext {
  onConfigure(size: u32): bool {
    requests = new Counter("probe_requests");
    return true;
  }

  createContext(context_id: u32): Context {
    return new Probe(context_id, this);
  }
}

class Probe extends Context {
  saw: string = "";
  mode: string = "";
  buffer: string = "";
  requestBody: string = "";
  failedLately: bool = false;

  constructor(context_id: u32, root_context: ProbeRoot) {
    super(context_id, root_context);
  }

  buffers(direction: string): bool {
    return this.buffer == direction || this.buffer == "both";
  }

  onRequestHeaders(count: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const counter = requests;
    if (counter !== null) {
      counter.increment(1);
    }
    const request = stream_context.headers.request;
    this.saw = "method=" + request.get(":method") + " path=" + request.get(":path") +
      " scheme=" + request.get(":scheme") + " xfp=" + request.get("x-forwarded-proto") +
      " rid=" + request.get("x-request-id");
    this.mode = request.get("x-probe");
    this.buffer = request.get("x-probe-buffer");
    request.add("x-probe-request", "seen");
    if (this.mode == "reply") {
      reply(403, "probe says no\n", [pair("content-type", "text/x-probe"), pair("x-probe-reply", "1")]);
      return FilterHeadersStatusValues.StopIteration;
    }
    if (this.mode == "callout") {
      const cluster = request.get("x-probe-cluster");
      let headers: Headers = [pair(":method", "GET"), pair(":path", "/probe/check"), pair(":authority", cluster)];
      if (request.get("x-probe-grpc") == "1") {
        headers = [pair(":method", "POST"), pair(":path", "/probe.Probe/Check"), pair(":authority", cluster),
          pair("content-type", "application/grpc")];
      }
      const result = this.root_context.httpCall(cluster, headers, new ArrayBuffer(0), [], 300, this, onCalloutResponse);
      if (result != WasmResultValues.Ok) {
        reply(500, "dispatch failed: " + (result as u32).toString() + "\n", []);
      }
      return FilterHeadersStatusValues.StopIteration;
    }
    if (this.mode == "foreign") {
      const name = request.get("x-probe-function");
      const data = String.UTF8.encode(request.get("x-probe-data"));
      let body = foreignLine(name, data);
      // A compressed result goes back through uncompress.
      if (name == "compress" && callForeign("compress", data) == 0) {
        const packed = new ArrayBuffer(foreignSize as i32);
        memory.copy(changetype<usize>(packed), foreignPointer, foreignSize);
        body += foreignLine("uncompress", packed);
      }
      reply(200, body, [pair("content-type", "text/x-probe")]);
      return FilterHeadersStatusValues.StopIteration;
    }
    return FilterHeadersStatusValues.Continue;
  }

  onRequestBody(size: usize, end_of_stream: bool): FilterDataStatusValues {
    if (this.requestBody != "") {
      this.requestBody += ",";
    }
    this.requestBody += (size as u32).toString();
    if (end_of_stream) {
      this.requestBody += "$";
    }
    if (!end_of_stream && this.buffers("request")) {
      return FilterDataStatusValues.StopIterationAndBuffer;
    }
    return FilterDataStatusValues.Continue;
  }

  onResponseHeaders(count: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const response = stream_context.headers.response;
    const sawResponse = "status=" + response.get(":status") + " content-length=" +
      response.get("content-length") + " content-type=" + response.get("content-type");
    response.add("x-probe-response", "1");
    response.add("x-probe-saw", this.saw);
    response.add("x-probe-saw-response", sawResponse);
    if (this.requestBody != "") {
      response.add("x-probe-request-body", this.requestBody);
    }
    return FilterHeadersStatusValues.Continue;
  }

  onResponseBody(size: usize, end_of_stream: bool): FilterDataStatusValues {
    if (this.mode == "late-reply") {
      if (!this.failedLately) {
        this.failedLately = true;
        reply(500, "too late\n", []);
      }
      return FilterDataStatusValues.StopIterationAndBuffer;
    }
    if (this.mode == "late-trap") {
      unreachable();
    }
    if (!end_of_stream && this.buffers("response")) {
      return FilterDataStatusValues.StopIterationAndBuffer;
    }
    return FilterDataStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => { return new ProbeRoot(context_id); }, "");
