fn main() { println!("{}", dbtel_agent::EBPF_OBJECT.len()); }
