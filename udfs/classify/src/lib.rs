//! `classify(text) -> category` for Arroyo SQL: the Switchboard category model (the same active
//! registry set the processors run). NULL for an empty text or when the models cannot load.

use arroyo_udf_plugin::udf;

#[udf]
fn classify(text: &str) -> Option<String> {
    switchboard_udf_common::predict(text)?.category
}

#[cfg(test)]
mod tests {
    #![allow(unsafe_code, clippy::unwrap_used)]
    use arroyo_udf_plugin::arrow::array::{Array, StringArray};
    use arroyo_udf_plugin::arrow::ffi::from_ffi;
    use arroyo_udf_plugin::{FfiArraySchema, FfiArrays, RunResult};

    fn registry() {
        std::env::set_var(
            "SWITCHBOARD_MODELS_REGISTRY",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/registry"),
        );
    }

    #[test]
    fn classifies_through_the_ffi_entry_point() {
        registry();
        assert_eq!(switchboard_udf_common::load_error(), None);
        let input = StringArray::from(vec![
            Some("I want a refund for the shoes I sent back"),
            Some("How do I reset the password of my account?"),
            Some("   "),
            None,
        ]);
        let out = match super::__run(FfiArrays::from_vec(vec![input.to_data()])) {
            RunResult::Ok(FfiArraySchema(array, schema)) => unsafe {
                from_ffi(array, &schema).unwrap()
            },
            RunResult::Err => panic!("the udf failed"),
        };
        let out = StringArray::from(out);
        assert_eq!(out.len(), 4);
        assert_eq!(out.value(0).to_lowercase(), "refund");
        assert_eq!(out.value(1).to_lowercase(), "account");
        assert!(out.is_null(2) && out.is_null(3));
    }
}
