//! Floating-point storage formats of tensor bytes (ONNX initializers, safetensors, GGUF
//! scales) and their conversion to and from f32/f64.
//!
//! In: little-endian bytes and a [`FloatFormat`]; out: `f32` values, or bytes from `f64`
//! values. The 16-bit formats go through the `half` crate: widening is exact, narrowing
//! rounds to nearest with ties to even, NaN stays NaN, and float16 keeps its subnormals
//! (a `1/n` loss scale for n up to 2^24 tokens is still nonzero in a float16 graph).

/// A floating-point element type as stored in a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatFormat {
    F32,
    F64,
    /// IEEE 754 binary16.
    F16,
    /// bfloat16: the upper half of an f32.
    BF16,
}

impl FloatFormat {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            FloatFormat::F32 => 4,
            FloatFormat::F64 => 8,
            FloatFormat::F16 | FloatFormat::BF16 => 2,
        }
    }

    /// Decodes little-endian elements to f32; a trailing partial element is ignored.
    /// f64 narrows to the nearest f32; the 16-bit formats widen exactly.
    pub fn decode(self, bytes: &[u8]) -> Vec<f32> {
        let chunks = bytes.chunks_exact(self.size());
        match self {
            FloatFormat::F32 => chunks.map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
            FloatFormat::F64 => chunks.map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
            FloatFormat::F16 => chunks.map(|c| f16_le(c.try_into().unwrap())).collect(),
            FloatFormat::BF16 => chunks.map(|c| half::bf16::from_le_bytes(c.try_into().unwrap()).to_f32()).collect(),
        }
    }

    /// Little-endian bytes of `values`, rounded to nearest (ties to even). The 16-bit
    /// formats round through f32: `half`'s f64 paths either do the same (x86 F16C) or drop
    /// the low 32 mantissa bits first, so going through f32 gives the same bytes on every
    /// machine. (Double rounding differs from one rounding only for an f64 within 2^-24
    /// relative of a 16-bit tie.)
    pub fn encode(self, values: &[f64]) -> Vec<u8> {
        let mut out = Vec::with_capacity(values.len() * self.size());
        for &v in values {
            match self {
                FloatFormat::F32 => out.extend((v as f32).to_le_bytes()),
                FloatFormat::F64 => out.extend(v.to_le_bytes()),
                FloatFormat::F16 => out.extend(half::f16::from_f32(v as f32).to_le_bytes()),
                FloatFormat::BF16 => out.extend(half::bf16::from_f32(v as f32).to_le_bytes()),
            }
        }
        out
    }
}

/// One little-endian float16 as f32 (exact).
pub fn f16_le(bytes: [u8; 2]) -> f32 {
    half::f16::from_le_bytes(bytes).to_f32()
}

impl TryFrom<safetensors::Dtype> for FloatFormat {
    type Error = safetensors::Dtype;

    /// The format of a safetensors float type; any other type is handed back.
    fn try_from(dtype: safetensors::Dtype) -> Result<Self, Self::Error> {
        use safetensors::Dtype;
        Ok(match dtype {
            Dtype::F32 => FloatFormat::F32,
            Dtype::F64 => FloatFormat::F64,
            Dtype::F16 => FloatFormat::F16,
            Dtype::BF16 => FloatFormat::BF16,
            other => return Err(other),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::FloatFormat::{self, *};

    fn bits16(format: FloatFormat, v: f64) -> u16 {
        let b = format.encode(&[v]);
        u16::from_le_bytes([b[0], b[1]])
    }

    fn from16(format: FloatFormat, bits: u16) -> f32 {
        format.decode(&bits.to_le_bytes())[0]
    }

    #[test]
    fn f16_decodes_known_values_exactly() {
        assert_eq!(from16(F16, 0x3c00), 1.0);
        assert_eq!(from16(F16, 0xc000), -2.0);
        assert_eq!(from16(F16, 0x7bff), 65504.0);
        assert_eq!(from16(F16, 0x0001), 5.960_464_5e-8);
        assert_eq!(from16(F16, 0x7c00), f32::INFINITY);
        assert_eq!(from16(F16, 0x8000).to_bits(), (-0.0f32).to_bits());
        assert!(from16(F16, 0x7e00).is_nan());
        assert_eq!(from16(BF16, 0x3fc0), 1.5);
    }

    #[test]
    fn nan_stays_nan_in_both_16_bit_formats() {
        for format in [F16, BF16] {
            let bits = bits16(format, f64::NAN);
            assert!(from16(format, bits).is_nan(), "{format:?}: NaN became {bits:#06x}");
        }
        // Infinity stays infinity, and so does overflow (round to nearest).
        assert_eq!(bits16(F16, f64::INFINITY), 0x7c00);
        assert_eq!(bits16(F16, 1e6), 0x7c00);
        assert_eq!(bits16(F16, -1e6), 0xfc00);
    }

    #[test]
    fn f16_rounds_half_to_even() {
        // Between 1 and 1 + 2^-10 the halfway point goes down to the even 1.0 (0x3c00);
        // between 1 + 2^-10 and 1 + 2^-9 it goes up to the even 0x3c02.
        let ulp = 2f64.powi(-10);
        assert_eq!(bits16(F16, 1.0 + ulp / 2.0), 0x3c00);
        assert_eq!(bits16(F16, 1.0 + 1.5 * ulp), 0x3c02);
        // Just above halfway rounds up.
        assert_eq!(bits16(F16, 1.0 + ulp / 2.0 + 2f64.powi(-20)), 0x3c01);
    }

    #[test]
    fn bf16_rounds_to_nearest_even_instead_of_truncating() {
        let ulp = 2f64.powi(-7); // bfloat16 has 7 fraction bits
        assert_eq!(bits16(BF16, 1.0 + 0.75 * ulp), 0x3f81); // truncation would give 0x3f80
        assert_eq!(bits16(BF16, 1.0 + ulp / 2.0), 0x3f80); // tie: down to even
        assert_eq!(bits16(BF16, 1.0 + 1.5 * ulp), 0x3f82); // tie: up to even
        assert_eq!(bits16(BF16, 1.0 / 3.0), 0x3eab); // 0x3eaa_aaab rounds up
    }

    #[test]
    fn f16_keeps_subnormal_constants() {
        // A 1/n loss scale for n = 20,000 tokens is below f16's smallest normal (6.1e-5).
        let v = 1.0 / 20_000.0;
        let back = from16(F16, bits16(F16, v)) as f64;
        assert!(back > 0.0 && (back - v).abs() <= 2f64.powi(-25), "1/20000 became {back}");
        // The smallest subnormal survives; half of it is a tie that goes to the even 0.
        assert_eq!(bits16(F16, 2f64.powi(-24)), 0x0001);
        assert_eq!(bits16(F16, 2f64.powi(-25)), 0x0000);
        assert_eq!(bits16(F16, 1.5 * 2f64.powi(-24)), 0x0002);
    }

    #[test]
    fn wide_formats_round_trip() {
        let values = [0.1, -3.5, 1e-30];
        for format in [F32, F64] {
            let back = format.decode(&format.encode(&values));
            assert_eq!(back, values.map(|v| v as f32));
        }
    }
}
