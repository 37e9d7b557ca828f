//! Numbers written exactly as prometheus_client writes them (`floatToGoString`).
//!
//! It is part of the file format: the `le` and `quantile` labels inside stored
//! keys are these strings, and a key that differs by one byte from
//! prometheus_client's is another series. The encoders use the same text for
//! sample values, so that an exposition matches prometheus_client's byte for byte.

use std::fmt::Write;

/// A small buffer on the stack to format into without allocating.
struct StackText {
    buf: [u8; 64],
    len: usize,
}

impl StackText {
    fn new() -> Self {
        StackText {
            buf: [0; 64],
            len: 0,
        }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).expect("only ASCII is written")
    }
}

impl Write for StackText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(std::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Python's `repr(float)`: shortest round-trip digits, exponent form when the
/// decimal exponent is below -4 or at least 16.
pub fn push_python_repr(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("nan");
        return;
    }
    if v.is_infinite() {
        out.push_str(if v > 0.0 { "inf" } else { "-inf" });
        return;
    }
    if v == v.trunc() && v.abs() < 1e15 {
        // Integral: the common case of counters and buckets.
        if v == 0.0 && v.is_sign_negative() {
            out.push('-');
        }
        let _ = write!(out, "{}.0", v as i64);
        return;
    }
    // The shortest round-trip form...
    let mut shortest = StackText::new();
    let _ = write!(shortest, "{:e}", v);
    let significant = shortest
        .as_str()
        .split('e')
        .next()
        .unwrap_or("")
        .bytes()
        .filter(u8::is_ascii_digit)
        .count();
    // ...is the only one of its length below 16 digits (two such decimals
    // are further apart than a double's rounding interval is wide). At 16
    // or 17 digits two may round-trip: Python takes the nearest decimal of
    // that many digits, ties to even.
    let mut sci = StackText::new();
    let form = if significant < 16 {
        shortest.as_str()
    } else {
        let _ = write!(sci, "{:.*e}", significant - 1, v);
        sci.as_str()
    };
    let (mantissa, exp) = form.split_once('e').expect("{:e} always has an exponent");
    let exp: i32 = exp.parse().expect("exponent is an integer");
    let negative = mantissa.starts_with('-');
    let mut digits = [0u8; 32];
    let mut n = 0;
    for b in mantissa.bytes().filter(u8::is_ascii_digit) {
        digits[n] = b;
        n += 1;
    }
    let digits = std::str::from_utf8(&digits[..n]).expect("ASCII digits");
    if negative {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        let point = exp + 1;
        if point <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-point) as usize));
            out.push_str(digits);
        } else if point as usize >= digits.len() {
            out.push_str(digits);
            out.extend(std::iter::repeat_n('0', point as usize - digits.len()));
            out.push_str(".0");
        } else {
            out.push_str(&digits[..point as usize]);
            out.push('.');
            out.push_str(&digits[point as usize..]);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
}

/// prometheus_client's `floatToGoString`.
pub fn push_go_float(out: &mut String, v: f64) {
    if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else if v.is_nan() {
        out.push_str("NaN");
    } else if v.abs() < 1e6 && (v as i32) as f64 == v && !(v == 0.0 && v.is_sign_negative()) {
        // Integral below a million (most counters and buckets): Python's and
        // Go's forms agree, `N.0`.
        push_integral(out, v as i32);
    } else {
        let start = out.len();
        push_python_repr(out, v);
        let dot = out[start..].find('.');
        if let Some(dot) = dot.filter(|&d| v > 0.0 && d > 6) {
            // Go switches to exponents sooner than Python: d.ddd…e+NN.
            let mut repr = StackText::new();
            let _ = repr.write_str(&out[start..]);
            let repr = repr.as_str();
            out.truncate(start);
            out.push_str(&repr[..1]);
            out.push('.');
            out.push_str(&repr[1..dot]);
            out.push_str(&repr[dot + 1..]);
            let trimmed = out[start..].trim_end_matches(['0', '.']).len();
            out.truncate(start + trimmed);
            let _ = write!(out, "e+{:02}", dot - 1);
        }
    }
}

/// `n` as `N.0` (`-N.0`), written straight into the string's spare
/// capacity: this runs once per sample of a scrape.
fn push_integral(out: &mut String, n: i32) {
    let magnitude = n.unsigned_abs();
    let digits = magnitude.checked_ilog10().unwrap_or(0) as usize + 1;
    let sign = usize::from(n < 0);
    let len = sign + digits + 2;
    // SAFETY: only ASCII bytes are written and only `len` written bytes are
    // added to the length, so the string stays UTF-8.
    let bytes = unsafe { out.as_mut_vec() };
    bytes.reserve(len);
    let spare = &mut bytes.spare_capacity_mut()[..len];
    spare[0].write(b'-'); // overwritten by the first digit when positive
    let mut rest = magnitude;
    for at in (sign..sign + digits).rev() {
        spare[at].write(b'0' + (rest % 10) as u8);
        rest /= 10;
    }
    spare[len - 2].write(b'.');
    spare[len - 1].write(b'0');
    // SAFETY: the `len` bytes past the old length were all written above.
    unsafe { bytes.set_len(bytes.len() + len) };
}

/// prometheus_client's `floatToGoString`, as a new string (a bound's `le` in a key).
pub fn go_float(v: f64) -> String {
    let mut s = String::new();
    push_go_float(&mut s, v);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repr(v: f64) -> String {
        let mut s = String::new();
        push_python_repr(&mut s, v);
        s
    }

    #[test]
    fn matches_python_repr() {
        for (v, want) in [
            (0.0, "0.0"),
            (1.0, "1.0"),
            (-2.5, "-2.5"),
            (0.005, "0.005"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (123456789.0, "123456789.0"),
            (1e16, "1e+16"),
            (1.2345678901234568e17, "1.2345678901234568e+17"),
            (-0.0, "-0.0"),
            (123456789012345.0, "123456789012345.0"),
            (1234567890123456.0, "1234567890123456.0"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e300, "1e+300"),
        ] {
            assert_eq!(repr(v), want, "{v}");
        }
    }

    #[test]
    fn matches_float_to_go_string() {
        for (v, want) in [
            (f64::INFINITY, "+Inf"),
            (f64::NAN, "NaN"),
            (10.0, "10.0"),
            (1000000.0, "1e+06"),
            (2500000.0, "2.5e+06"),
            (123456.0, "123456.0"),
            (1234567.0, "1.234567e+06"),
            (-1234567.0, "-1234567.0"),
            (1e15, "1e+15"),
            (1234567890123456.0, "1.234567890123456e+15"),
            (12345678.5, "1.23456785e+07"),
        ] {
            assert_eq!(go_float(v), want, "{v}");
        }
    }

    #[test]
    fn integral_values_below_a_million_are_written_as_n_point_zero() {
        let mut out = String::from("x ");
        for n in (-999_999..=999_999)
            .step_by(7)
            .chain([-999_999, -1, 0, 9, 10, 99, 999_999])
        {
            out.truncate(2);
            push_go_float(&mut out, n as f64);
            assert_eq!(out, format!("x {n}.0"));
        }
    }

    #[test]
    fn matches_prometheus_client_on_values_of_every_magnitude() {
        let mut values = vec![
            0.0,
            -0.0,
            1.0,
            0.1,
            1e-300,
            5e-324,
            f64::MAX,
            1e15,
            1e16,
            999999.0,
        ];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for i in 0..3000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mantissa = (x % 1_000_000) as f64 / 997.0;
            let v = mantissa * 10f64.powi((i % 40) - 20);
            values.push(if i % 3 == 0 {
                v.trunc()
            } else if i % 7 == 0 {
                -v
            } else {
                v
            });
            // Short decimals (fewer than 16 digits: one formatting pass) and
            // any double at all.
            values.push((x % 100_000) as f64 / 1000.0 * 10f64.powi((i % 12) - 6));
            let any = f64::from_bits(x);
            if any.is_finite() {
                values.push(any);
            }
        }
        let input: String = values.iter().map(|v| format!("{:?}\n", v)).collect();
        let mut child = std::process::Command::new(crate::test_python::with_prometheus_client())
            .args([
                "-c",
                "import sys\nfrom prometheus_client.utils import floatToGoString as f\n\
                for line in sys.stdin: print(f(float(line)))",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs");
        use std::io::Write as _;
        // Written from a thread: the answers fill the other pipe meanwhile.
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(out.status.success());
        let theirs = String::from_utf8(out.stdout).unwrap();
        for (v, want) in values.iter().zip(theirs.lines()) {
            assert_eq!(go_float(*v), want, "{v:?}");
        }
        assert_eq!(theirs.lines().count(), values.len());
    }
}
