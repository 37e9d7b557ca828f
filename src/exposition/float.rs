//! Numbers written exactly as prometheus_client writes them (`floatToGoString`),
//! so that samples match its output byte for byte.

use std::fmt::Write;

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
    let (negative, digits, exp) = shortest_digits(v);
    if negative {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        let point = exp + 1;
        if point <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-point) as usize));
            out.push_str(&digits);
        } else if point as usize >= digits.len() {
            out.push_str(&digits);
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

/// Sign, shortest decimal digits and decimal exponent of `v` (`d.ddd × 10^exp`).
fn shortest_digits(v: f64) -> (bool, String, i32) {
    let s = format!("{:e}", v);
    let (mantissa, exp) = s.split_once('e').expect("{:e} always has an exponent");
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    (
        negative,
        digits,
        exp.parse().expect("exponent is an integer"),
    )
}

/// prometheus_client's `floatToGoString`.
pub fn push_go_float(out: &mut String, v: f64) {
    if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else if v.is_nan() {
        out.push_str("NaN");
    } else {
        let start = out.len();
        push_python_repr(out, v);
        let repr = &out[start..];
        let dot = repr.find('.');
        if let Some(dot) = dot.filter(|&d| v > 0.0 && d > 6) {
            // Go switches to exponents sooner than Python.
            let mantissa = format!("{}.{}{}", &repr[..1], &repr[1..dot], &repr[dot + 1..]);
            let mantissa = mantissa.trim_end_matches(['0', '.']).to_owned();
            out.truncate(start);
            let _ = write!(out, "{}e+0{}", mantissa, dot - 1);
        }
    }
}

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
        ] {
            assert_eq!(go_float(v), want, "{v}");
        }
    }
}
