module wasmesh.example/e2e/probe

go 1.27
