// The differential corpus's probe module, built with Go's own wasip1 target:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o probe.wasm .
//
// It does what the Rust and AssemblyScript probes do, driven by request headers (see
// harness/e2e/README.md, "Foreign modules"). It uses fmt on purpose: fmt pulls in Go's syscall
// package, whose start-up asks WASI about stdin/stdout/stderr from _initialize.

package main

import (
	"fmt"
	"unsafe"
)

func main() {}

//go:wasmexport proxy_abi_version_0_2_1
func proxyAbiVersion() {}

type stream struct {
	saw          string
	mode         string
	buffer       string
	requestBody  string
	callResult   string
	failedLately bool
}

var (
	streams  = map[uint32]*stream{}
	calls    = map[uint32]uint32{} // callout token -> stream context
	requests uint32
)

//go:wasmexport proxy_on_vm_start
func proxyOnVMStart(rootContextID, size uint32) uint32 { return 1 }

//go:wasmexport proxy_on_configure
func proxyOnConfigure(rootContextID, size uint32) uint32 {
	requests = defineCounter("probe_requests")
	return 1
}

//go:wasmexport proxy_on_context_create
func proxyOnContextCreate(contextID, parentID uint32) {
	if parentID != 0 {
		streams[contextID] = &stream{}
	}
}

//go:wasmexport proxy_on_request_headers
func proxyOnRequestHeaders(contextID, headers, endOfStream uint32) uint32 {
	s := streams[contextID]
	if s == nil {
		return 0
	}
	proxyIncrementMetric(requests, 1)
	s.saw = fmt.Sprintf("method=%s path=%s scheme=%s xfp=%s rid=%s",
		header(mapRequestHeaders, ":method"), header(mapRequestHeaders, ":path"),
		header(mapRequestHeaders, ":scheme"), header(mapRequestHeaders, "x-forwarded-proto"),
		header(mapRequestHeaders, "x-request-id"))
	s.mode = header(mapRequestHeaders, "x-probe")
	s.buffer = header(mapRequestHeaders, "x-probe-buffer")
	addHeader(mapRequestHeaders, "x-probe-request", "seen")
	switch s.mode {
	case "reply":
		sendLocalResponse(403, "probe says no\n", [][2]string{{"content-type", "text/x-probe"}, {"x-probe-reply", "1"}})
		return 1
	case "callout":
		cluster := header(mapRequestHeaders, "x-probe-cluster")
		callHeaders := [][2]string{{":method", "GET"}, {":path", "/probe/check"}, {":authority", cluster}}
		if header(mapRequestHeaders, "x-probe-grpc") == "1" {
			callHeaders = [][2]string{{":method", "POST"}, {":path", "/probe.Probe/Check"}, {":authority", cluster}, {"content-type", "application/grpc"}}
		}
		token, status := httpCall(cluster, callHeaders, 300)
		if status != 0 {
			sendLocalResponse(500, fmt.Sprintf("dispatch failed: %d\n", status), nil)
			return 1
		}
		calls[token] = contextID
		return 1
	case "foreign":
		function := header(mapRequestHeaders, "x-probe-function")
		data := []byte(header(mapRequestHeaders, "x-probe-data"))
		body := foreignLine(function, data)
		// A compressed result goes back through uncompress.
		if function == "compress" {
			if packed, status := callForeign("compress", data); status == 0 {
				body += foreignLine("uncompress", packed)
			}
		}
		sendLocalResponse(200, body, [][2]string{{"content-type", "text/x-probe"}})
		return 1
	}
	return 0
}

// foreignLine is "<function> ok <result in hex>" or "<function> error <status code>".
func foreignLine(function string, arguments []byte) string {
	result, status := callForeign(function, arguments)
	if status != 0 {
		return fmt.Sprintf("%s error %d\n", function, status)
	}
	return fmt.Sprintf("%s ok %x\n", function, result)
}

//go:wasmexport proxy_on_request_body
func proxyOnRequestBody(contextID, size, endOfStream uint32) uint32 {
	s := streams[contextID]
	if s == nil {
		return 0
	}
	if s.requestBody != "" {
		s.requestBody += ","
	}
	s.requestBody += fmt.Sprintf("%d", size)
	if endOfStream != 0 {
		s.requestBody += "$"
	}
	if endOfStream == 0 && (s.buffer == "request" || s.buffer == "both") {
		return 1
	}
	return 0
}

//go:wasmexport proxy_on_response_headers
func proxyOnResponseHeaders(contextID, headers, endOfStream uint32) uint32 {
	s := streams[contextID]
	if s == nil {
		return 0
	}
	addHeader(mapResponseHeaders, "x-probe-response", "1")
	addHeader(mapResponseHeaders, "x-probe-saw", s.saw)
	addHeader(mapResponseHeaders, "x-probe-saw-response", fmt.Sprintf("status=%s content-length=%s content-type=%s",
		header(mapResponseHeaders, ":status"), header(mapResponseHeaders, "content-length"),
		header(mapResponseHeaders, "content-type")))
	if s.requestBody != "" {
		addHeader(mapResponseHeaders, "x-probe-request-body", s.requestBody)
	}
	return 0
}

//go:wasmexport proxy_on_response_body
func proxyOnResponseBody(contextID, size, endOfStream uint32) uint32 {
	s := streams[contextID]
	if s == nil {
		return 0
	}
	switch s.mode {
	case "late-reply":
		if !s.failedLately {
			s.failedLately = true
			sendLocalResponse(500, "too late\n", nil)
		}
		return 1
	case "late-trap":
		// A load far outside linear memory: a real wasm trap, not a Go panic (which would exit).
		return uint32(*(*byte)(unsafe.Pointer(uintptr(0xfffffff0))))
	}
	if endOfStream == 0 && (s.buffer == "response" || s.buffer == "both") {
		return 1
	}
	return 0
}

//go:wasmexport proxy_on_http_call_response
func proxyOnHTTPCallResponse(rootContextID, token, headers, bodySize, trailers uint32) {
	contextID, ok := calls[token]
	if !ok {
		return
	}
	delete(calls, token)
	proxySetEffectiveContext(contextID)
	status := header(mapCallResponseHeaders, ":status")
	grpcStatus := header(mapCallResponseHeaders, "grpc-status")
	serviceTime := "absent"
	if header(mapCallResponseHeaders, "x-envoy-upstream-service-time") != "" {
		serviceTime = "present"
	}
	result := fmt.Sprintf("status=%s grpc-status=%s grpc-message=%s service-time=%s body=%s",
		status, grpcStatus, header(mapCallResponseHeaders, "grpc-message"), serviceTime, callResponseBody(bodySize))
	if status == "200" && grpcStatus == "" {
		addHeader(mapRequestHeaders, "x-probe-callout", result)
		proxyContinueStream(streamRequest)
		return
	}
	sendLocalResponse(403, result+"\n", nil)
}

//go:wasmexport proxy_on_done
func proxyOnDone(contextID uint32) uint32 { return 1 }

//go:wasmexport proxy_on_log
func proxyOnLog(contextID uint32) {}

//go:wasmexport proxy_on_delete
func proxyOnDelete(contextID uint32) {
	delete(streams, contextID)
}
