//! A light OTLP receiver on fixed loopback ports (gRPC 4317, HTTP 4318), for
//! profiling the agent by hand: prints the spans received each second (it
//! counts them and keeps none).
fn main() {
    let rx = dbtel_tests::Receiver::start_counting_on(4317, 4318);
    let mut last = 0;
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let n = rx.count();
        if n != last {
            eprintln!("otlp_receiver: {n} spans ({} in the last second)", n - last);
            last = n;
        }
    }
}
