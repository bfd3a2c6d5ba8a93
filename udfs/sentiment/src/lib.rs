//! `sentiment(text) -> score` for Arroyo SQL: the Switchboard sentiment model, from -1 (very
//! negative) to 1 (very positive). NULL for an empty text or when the models cannot load.

use arroyo_udf_plugin::udf;

#[udf]
fn sentiment(text: &str) -> Option<f64> {
    Some(f64::from(
        switchboard_udf_common::predict(text)?.sentiment?.score,
    ))
}

#[cfg(test)]
mod tests {
    #![allow(unsafe_code, clippy::unwrap_used)]
    use arroyo_udf_plugin::arrow::array::{Array, Float64Array, StringArray};
    use arroyo_udf_plugin::arrow::ffi::from_ffi;
    use arroyo_udf_plugin::{FfiArraySchema, FfiArrays, RunResult};

    #[test]
    fn scores_through_the_ffi_entry_point() {
        std::env::set_var(
            "SWITCHBOARD_MODELS_REGISTRY",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/registry"),
        );
        let input = StringArray::from(vec![
            Some("Thank you so much, the replacement arrived early and works perfectly!"),
            Some("This is the third time you lost my parcel. Absolutely furious, worst service ever."),
            Some(""),
        ]);
        let out = match super::__run(FfiArrays::from_vec(vec![input.to_data()])) {
            RunResult::Ok(FfiArraySchema(array, schema)) => unsafe {
                from_ffi(array, &schema).unwrap()
            },
            RunResult::Err => panic!("the udf failed"),
        };
        let out = Float64Array::from(out);
        assert!(out.value(0) > 0.3, "positive scored {}", out.value(0));
        assert!(out.value(1) < -0.3, "negative scored {}", out.value(1));
        assert!(out.value(0) > out.value(1));
        assert!(out.is_null(2));
    }
}
