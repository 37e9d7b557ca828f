//! CPU cost of one resource sample (sysinfo, this process only, memory + CPU),
//! as a worker's sampler takes it once a second.
//!     cargo bench --bench process_sampler

use _core::bench::own_process;

fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into `ts`, a valid timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn main() {
    let samples = 2000;
    own_process().expect("this process is visible");
    let start = thread_cpu_seconds();
    for _ in 0..samples {
        std::hint::black_box(own_process());
    }
    let per_sample = (thread_cpu_seconds() - start) / samples as f64;
    println!("| sampler | CPU per sample | share of a core at 1 sample/s |");
    println!("|---|---|---|");
    println!(
        "| sysinfo (pid only, memory + cpu) | {:.1} µs | {:.4} % |",
        per_sample * 1e6,
        per_sample * 100.0
    );
}
