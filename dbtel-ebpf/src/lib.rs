// Empty on purpose: the eBPF programs live in the `dbtel` binary (src/main.rs),
// built for bpfel-unknown-none by dbtel-agent's build script.
#![no_std]
