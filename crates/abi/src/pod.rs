//! Plain-old-data: the types that may be copied to and from shared memory.
//!
//! A wire structure is copied out of memory a peer can write, byte for byte,
//! and only then looked at (`RING_COPY_REQUEST` in `xen/io/ring.h`). That is
//! sound only for types that are valid for every bit pattern and have no
//! implicit padding (padding would leak our stack to the peer when written).
//! [`Pod`] marks those types; [`wire_struct!`](crate::wire_struct) defines them
//! and proves the "no padding" part at compile time.

use core::mem::{size_of, MaybeUninit};

/// A type that is valid for every bit pattern and has no padding bytes.
///
/// # Safety
///
/// Implementors must be `#[repr(C)]`, `#[repr(transparent)]` or a primitive
/// integer, consist only of `Pod` fields, contain no implicit padding, and
/// accept any bit pattern as a valid value.
pub unsafe trait Pod: Copy + Send + Sync + 'static {
    /// The all-zero value.
    fn zeroed() -> Self {
        // SAFETY: every bit pattern, all-zero included, is a valid `Self`.
        unsafe { MaybeUninit::<Self>::zeroed().assume_init() }
    }

    /// The value's bytes, as they are laid out in memory.
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: `Self` has no padding, so all `size_of::<Self>()` bytes
        // behind `self` are initialised; the slice borrows `self`.
        unsafe {
            core::slice::from_raw_parts((self as *const Self).cast::<u8>(), size_of::<Self>())
        }
    }

    /// The value's bytes, writable; any bytes written form a valid value.
    fn as_bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for `as_bytes`, and every bit pattern is a valid `Self`,
        // so any write through the slice leaves a valid value.
        unsafe {
            core::slice::from_raw_parts_mut((self as *mut Self).cast::<u8>(), size_of::<Self>())
        }
    }

    /// Reads a value from the front of `bytes`, if it is long enough.
    fn read_from_prefix(bytes: &[u8]) -> Option<Self> {
        let mut v = Self::zeroed();
        let n = size_of::<Self>();
        v.as_bytes_mut().copy_from_slice(bytes.get(..n)?);
        Some(v)
    }
}

macro_rules! impl_pod_for_primitives {
    ($($t:ty),*) => {
        $(
            // SAFETY: primitive integers have no padding and no invalid values.
            unsafe impl Pod for $t {}
        )*
    };
}
impl_pod_for_primitives!(u8, u16, u32, u64, i8, i16, i32, i64);

// SAFETY: an array of `Pod` has no padding between elements (size is a
// multiple of alignment) and every element accepts any bit pattern.
unsafe impl<T: Pod, const N: usize> Pod for [T; N] {}

/// Compile-time proof that a field type is [`Pod`]; used by `wire_struct!`.
#[doc(hidden)]
pub const fn assert_pod<T: Pod>() {}

/// One field of a wire structure: its C name, offset and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldLayout {
    /// The field's name in the C header (explicit padding starts with `_`).
    pub c_name: &'static str,
    /// `offsetof` of the field.
    pub offset: usize,
    /// `sizeof` of the field.
    pub size: usize,
}

/// The layout of a wire structure, as the C header would compute it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TypeLayout {
    /// The C type this struct mirrors, as a C type expression.
    pub c_type: &'static str,
    /// `sizeof` of the type.
    pub size: usize,
    /// Every field, padding included, in declaration order.
    pub fields: &'static [FieldLayout],
}

/// A wire structure that mirrors a C type of Xen's or Linux's headers.
pub trait CLayout: Pod {
    /// Its layout, checked against the C header by `tests/layout.rs`.
    const LAYOUT: TypeLayout;
}

/// One constant of a C header and the value our definition gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CConst {
    /// The C expression (usually the macro or enumerator name).
    pub c_name: &'static str,
    /// Our value, widened.
    pub value: i128,
}

/// Defines `#[repr(C)]` wire structures that are [`Pod`] and [`CLayout`].
///
/// Every field must be `Pod`; a compile-time assertion proves the struct has
/// no implicit padding, so every pad byte is an explicit `_pad` field that we
/// zero. A field named `type_` stands for C's `type`.
#[macro_export]
macro_rules! wire_struct {
    ($(
        $(#[doc = $doc:literal])*
        #[c = $cty:literal]
        $(#[$attr:meta])*
        pub struct $name:ident {
            $( $(#[doc = $fdoc:literal])* pub $field:ident : $fty:ty ),* $(,)?
        }
    )*) => {$(
        $(#[doc = $doc])*
        $(#[$attr])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct $name {
            $( $(#[doc = $fdoc])* pub $field: $fty ),*
        }

        const _: () = {
            $( $crate::pod::assert_pod::<$fty>(); )*
            assert!(
                ::core::mem::size_of::<$name>() == 0 $( + ::core::mem::size_of::<$fty>() )*,
                concat!(stringify!($name), " has implicit padding"),
            );
        };

        // SAFETY: every field is `Pod` and the assertion above proves that the
        // fields cover the whole struct, so there is no padding; the
        // attributes given include `#[repr(C)]` (checked by the layout test).
        unsafe impl $crate::pod::Pod for $name {}

        impl $crate::pod::CLayout for $name {
            const LAYOUT: $crate::pod::TypeLayout = $crate::pod::TypeLayout {
                c_type: $cty,
                size: ::core::mem::size_of::<$name>(),
                fields: &[$(
                    $crate::pod::FieldLayout {
                        c_name: $crate::pod::c_field_name(stringify!($field)),
                        offset: ::core::mem::offset_of!($name, $field),
                        size: ::core::mem::size_of::<$fty>(),
                    }
                ),*],
            };
        }
    )*};
}

/// Defines header constants and a `CONSTANTS` table of them for the layout
/// test. `NAME: T = v;` mirrors C's `NAME`; `NAME: T = v, c "Name";` mirrors a
/// C name that is not upper case.
#[macro_export]
macro_rules! xen_consts {
    ($(
        $(#[doc = $doc:literal])*
        $name:ident : $t:ty = $v:expr $(, c $cname:literal)? ;
    )*) => {
        $( $(#[doc = $doc])* pub const $name: $t = $v; )*

        /// Every constant of this module with the C name it mirrors.
        pub const CONSTANTS: &[$crate::pod::CConst] = &[$(
            $crate::pod::CConst {
                c_name: $crate::xen_consts!(@name $name $(, $cname)?),
                value: $name as i128,
            }
        ),*];
    };
    (@name $name:ident) => { stringify!($name) };
    (@name $name:ident, $cname:literal) => { $cname };
}

/// Maps a Rust field name to the C one: `type_` is C's `type`.
#[doc(hidden)]
pub const fn c_field_name(rust: &'static str) -> &'static str {
    let b = rust.as_bytes();
    if b.len() > 1 && b[b.len() - 1] == b'_' && b[0] != b'_' {
        let (head, _) = b.split_at(b.len() - 1);
        match core::str::from_utf8(head) {
            Ok(s) => s,
            Err(_) => rust,
        }
    } else {
        rust
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_field_name_strips_keyword_suffix_only() {
        assert_eq!(c_field_name("type_"), "type");
        assert_eq!(c_field_name("_pad0"), "_pad0");
        assert_eq!(c_field_name("gref"), "gref");
    }

    #[test]
    fn read_from_prefix_needs_enough_bytes() {
        assert_eq!(u32::read_from_prefix(&[1, 0, 0]), None);
        assert_eq!(u32::read_from_prefix(&[1, 0, 0, 0, 9]), Some(1));
    }
}
