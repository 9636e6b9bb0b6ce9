//! `#[pool_task]`: register a free function so that workers can find it by name.
//!
//! The function is emitted exactly as written; after it comes one entry of the
//! `TASKS` distributed slice, in a `const _` so that it adds no name to the module:
//!
//! ```text
//! const _: () = {
//!     #[::procpool::__private::linkme::distributed_slice(::procpool::__private::TASKS)]
//!     #[linkme(crate = ::procpool::__private::linkme)]
//!     static __PROCPOOL_TASK: ::procpool::__private::TaskEntry = ::procpool::__private::TaskEntry::new(
//!         ::core::concat!(::core::module_path!(), "::", "square"),
//!         || ::procpool::__private::type_id_of_val(&square),
//!         |batch| ::procpool::__private::run_batch::<(u64,), _>(square, batch),
//!     );
//! };
//! ```
//!
//! What each part is for:
//!
//! - `distributed_slice(TASKS)`: linkme places the static in a link section, and the
//!   linker assembles every such static of the program into the `TASKS` slice, so
//!   the registry is complete before any code runs, without constructors;
//! - `#[linkme(crate = ..)]`: linkme's own expansion reaches linkme through
//!   procpool's re-export, so the user's crate needs no linkme dependency;
//! - the name, `module::path::square`, is made by the compiler where the function
//!   is (`module_path!()`), with the function's name unraw'd (`r#type` → `type`):
//!   it is what travels to the worker, which looks the entry up by it;
//! - the `TypeId` closure gives the type of the function item, unique to each
//!   function: the parent finds the entry of the function it is handed by it;
//! - the batch closure instantiates `run_batch` for the tuple of the parameter
//!   types; the unmet `Serialize`/`DeserializeOwned`/`Send` bounds of a parameter
//!   or the result are reported on this call;
//! - `const _` hides the static, so every task's is named `__PROCPOOL_TASK`
//!   without clashing.
//!
//! The function's `#[cfg]` attributes go on the `const _` too (see
//! [`registration`]).

use proc_macro2::{Group, Ident, Span, TokenStream, TokenTree};
use quote::{ToTokens, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::visit::Visit;
use syn::{FnArg, Pat, ReturnType, Signature, Type};

use crate::attr::Options;
use crate::error::{self, Errors, code};
use crate::item::{self, FnItem};

/// The most parameters a task can have: the arities `Task` is implemented for.
const MAX_PARAMETERS: usize = 12;

/// The message for everything that makes the function generic: type, lifetime or
/// const parameters, `impl Trait` in a parameter, the elided lifetime `'_`.
const GENERIC: &str =
    "a pool task cannot be generic: workers find it by name, so its types must be concrete";

/// Expands `#[pool_task(args)] item`: the item followed by its registration, or the
/// item unchanged followed by every error.
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    match try_expand(args, item.clone()) {
        Ok(output) => output,
        Err(error) => error::rejected(item, &error),
    }
}

/// [`expand`] without the fallback: the registration after the item, or every error.
///
/// The item is emitted from the tokens the macro received, not re-printed from
/// syn's tree, so it is exactly what the user wrote.
fn try_expand(args: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let (options, function) = item::parse_checked(
        "pool_task",
        "#[pool_task] goes on a free `fn`",
        check,
        args,
        item.clone(),
    )?;
    let mut output = item;
    output.extend(registration(&options, &function));
    Ok(output)
}

/// Pushes one error for each thing that keeps `sig` from being a pool task.
///
/// In this order, each pointing at what it rejects:
///
/// 1. `async`, `unsafe`, and any ABI but `extern "Rust"` (a bare `extern` is
///    `extern "C"`);
/// 2. generic parameters of any kind, all the `<..>` at once;
/// 3. for each parameter: a receiver (`self` parses in any signature, so a method
///    pasted out of an `impl` still reaches this), a pattern instead of a name
///    ([`check_pattern`]), and what its type may not contain ([`TypeCheck`]);
/// 4. more than [`MAX_PARAMETERS`] parameters, pointing at the extra ones;
/// 5. `...`;
/// 6. what the result type may not contain.
///
/// A `const fn` and a `where` clause are accepted: they change nothing for a call
/// through the registry.
fn check(sig: &Signature, errors: &mut Errors) {
    if let Some(token) = &sig.asyncness {
        errors.spanned(
            token,
            "a pool task cannot be async: workers call it synchronously",
        );
    }
    if let Some(token) = &sig.unsafety {
        errors.spanned(
            token,
            "a pool task cannot be unsafe: workers call it with whatever the parent sends, \
             so write a safe function that upholds the contract",
        );
    }
    if let Some(abi) = &sig.abi {
        let is_rust = abi.name.as_ref().is_some_and(|name| name.value() == "Rust");
        if !is_rust {
            errors.spanned(
                abi,
                format!(
                    "a pool task cannot have the `{}` ABI: workers call it as a Rust function",
                    code(abi)
                ),
            );
        }
    }
    if !sig.generics.params.is_empty() {
        errors.spanned(&sig.generics, GENERIC);
    }
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => {
                errors.spanned(
                    receiver,
                    "a pool task must be a free function, not a method",
                );
            }
            FnArg::Typed(parameter) => {
                check_pattern(&parameter.pat, &parameter.ty, errors);
                TypeCheck {
                    errors: &mut *errors,
                    role: Role::Parameter,
                }
                .visit_type(&parameter.ty);
            }
        }
    }
    if sig.inputs.len() > MAX_PARAMETERS {
        let extra: Vec<&FnArg> = sig.inputs.iter().skip(MAX_PARAMETERS).collect();
        errors.spanned(
            quote!(#(#extra)*),
            format!(
                "a pool task takes at most {MAX_PARAMETERS} parameters, this one takes {}: \
                 group some of them in a struct or a tuple",
                sig.inputs.len()
            ),
        );
    }
    if let Some(variadic) = &sig.variadic {
        errors.spanned(variadic, "a pool task cannot be variadic");
    }
    if let ReturnType::Type(_, ty) = &sig.output {
        TypeCheck {
            errors,
            role: Role::Result,
        }
        .visit_type(ty);
    }
}

/// A parameter must be a name (`x`, `mut x`, `_x`) or `_`, not a pattern to destructure.
///
/// The error suggests a name: the binding's own for `n @ 1..`, `pair` for a
/// two-element tuple, `tuple` for another, `items` for a slice pattern, the type's
/// name in snake case for a struct or tuple-struct pattern (`PointPair { .. }` →
/// `point_pair`), and `value` otherwise; with the parameter's type, as the user
/// would write it.
fn check_pattern(pat: &Pat, ty: &Type, errors: &mut Errors) {
    let name = match pat {
        Pat::Ident(binding) if binding.subpat.is_none() => return,
        Pat::Wild(_) => return,
        Pat::Ident(binding) => binding.ident.unraw().to_string(),
        Pat::Tuple(tuple) if tuple.elems.len() == 2 => "pair".to_owned(),
        Pat::Tuple(_) => "tuple".to_owned(),
        Pat::Slice(_) => "items".to_owned(),
        Pat::Struct(pat) => snake_case(
            &pat.path
                .segments
                .last()
                .map_or("value".into(), |s| s.ident.to_string()),
        ),
        Pat::TupleStruct(pat) => snake_case(
            &pat.path
                .segments
                .last()
                .map_or("value".into(), |s| s.ident.to_string()),
        ),
        _ => "value".to_owned(),
    };
    errors.spanned(
        pat,
        format!(
            "use a plain name for each parameter, e.g. `{name}: {}`",
            code(ty)
        ),
    );
}

/// `PointPair` → `point_pair`, for suggesting a parameter name after a type.
///
/// Every uppercase letter but a leading one gets an underscore before it, so an
/// acronym comes out one letter at a time (`IOError` → `i_o_error`).
fn snake_case(name: &str) -> String {
    let mut snake = String::with_capacity(name.len() + 4);
    for (index, c) in name.chars().enumerate() {
        if c.is_uppercase() {
            if index > 0 {
                snake.push('_');
            }
            snake.extend(c.to_lowercase());
        } else {
            snake.push(c);
        }
    }
    snake
}

/// Which side of the call a type crosses the process boundary on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A parameter: encoded by the parent, decoded by the worker.
    Parameter,
    /// The result: encoded by the worker, decoded by the parent.
    Result,
}

/// Finds what cannot cross a process boundary in a type: borrows, `impl Trait`, and
/// the elided lifetime `'_` (which makes the function generic).
///
/// Function pointers, trait objects, `Fn(..)` sugar and array lengths are not
/// entered: what they borrow is theirs, and the compiler reports such types as not
/// serializable anyway.
struct TypeCheck<'a> {
    /// Where each finding goes.
    errors: &'a mut Errors,
    /// Which type this is, for the wording of the messages.
    role: Role,
}

/// The visitor walks the whole type, except where a method below stops it; a
/// method that reports does not go further in, so `&Vec<&str>` gets one error,
/// for the outer `&`.
impl<'ast> Visit<'ast> for TypeCheck<'_> {
    /// A borrow, `&T` or `&mut T`, anywhere in the type (`Vec<&str>` included):
    /// reported with the owned type to use when [`owned_version`] knows one.
    fn visit_type_reference(&mut self, reference: &'ast syn::TypeReference) {
        let lead = match self.role {
            Role::Parameter => "parameters are sent to another process and must be owned",
            Role::Result => "the result is sent back to the parent process and must be owned",
        };
        let message = match owned_version(reference) {
            Some(owned) => format!("{lead}: use `{owned}` instead of `{}`", code(reference)),
            None => format!("{lead}: use an owned type such as String or Vec<T>"),
        };
        self.errors.spanned(reference, message);
    }

    /// `impl Trait`: a hidden type parameter in a parameter, an opaque type in the
    /// result.
    fn visit_type_impl_trait(&mut self, impl_trait: &'ast syn::TypeImplTrait) {
        match self.role {
            Role::Parameter => self.errors.spanned(impl_trait, GENERIC),
            Role::Result => self.errors.spanned(
                impl_trait,
                "a pool task cannot return `impl Trait`: the parent decodes the result, \
                 so its type must be concrete",
            ),
        }
    }

    /// The elided lifetime `'_`, which is a hidden lifetime parameter. A named
    /// lifetime other than `'static` needs a generic parameter, reported already.
    fn visit_lifetime(&mut self, lifetime: &'ast syn::Lifetime) {
        if lifetime.ident == "_" {
            self.errors.spanned(lifetime, GENERIC);
        }
    }

    /// Not entered: `fn(&str) -> usize` borrows nothing itself.
    fn visit_type_bare_fn(&mut self, _: &'ast syn::TypeBareFn) {}

    /// Not entered: `dyn Fn(&str)`, `dyn Trait + '_`.
    fn visit_type_trait_object(&mut self, _: &'ast syn::TypeTraitObject) {}

    /// Not entered: the `(&str) -> usize` of a path such as `Fn(&str) -> usize`.
    fn visit_parenthesized_generic_arguments(
        &mut self,
        _: &'ast syn::ParenthesizedGenericArguments,
    ) {
    }

    /// Not entered: array lengths (`[u8; N]`) and const arguments are values, not
    /// types.
    fn visit_expr(&mut self, _: &'ast syn::Expr) {}
}

/// The owned counterpart of a borrowed type, when there is an obvious one:
/// `&str` → `String`, `&[T]` → `Vec<T>`, `&Path` → `PathBuf`, `&T` → `T`.
///
/// `&OsStr` and `&CStr` become `OsString` and `CString`; a path with generic
/// arguments (`&Vec<u8>`), an array or a tuple loses its `&` (`&mut` too). `None`
/// for what has no obvious owned form (`&dyn Trait`, `&impl Trait`, `&fn()`), and
/// the message then names String and Vec as examples.
fn owned_version(reference: &syn::TypeReference) -> Option<String> {
    match &*reference.elem {
        Type::Path(path) if path.qself.is_none() => {
            let last = path.path.segments.last()?;
            let known = match last.ident.to_string().as_str() {
                _ if !last.arguments.is_none() => None,
                "str" => Some("String"),
                "Path" => Some("PathBuf"),
                "OsStr" => Some("OsString"),
                "CStr" => Some("CString"),
                _ => None,
            };
            Some(known.map_or_else(|| code(path), str::to_owned))
        }
        Type::Slice(slice) => Some(format!("Vec<{}>", code(&slice.elem))),
        Type::Array(_) | Type::Tuple(_) => Some(code(&reference.elem)),
        _ => None,
    }
}

/// The `const _` block that adds `function` to the registry.
///
/// `options.krate` starts every procpool path. The argument tuple lists the
/// parameter types in order, as written (`(u64, String,)`, or `()` for none);
/// receivers were rejected by [`check`], so none is left to skip. The module docs
/// show the output.
fn registration(options: &Options, function: &FnItem) -> TokenStream {
    let krate = &options.krate;
    let ident = &function.sig.ident;
    let name = ident.unraw().to_string();
    let types = function.sig.inputs.iter().filter_map(|input| match input {
        FnArg::Typed(parameter) => Some(&parameter.ty),
        FnArg::Receiver(_) => None,
    });
    // A `#[cfg]` below `#[pool_task]` may remove the function: remove its entry too.
    let cfgs = function
        .attrs
        .iter()
        .filter(|attr| attr.path().is_ident("cfg"));
    // Mixed-site hygiene, so that a task named `input` or `out` is not shadowed.
    let batch = Ident::new("batch", Span::mixed_site());
    // When a parameter or the result is not serializable, the compiler reports the
    // unmet bound of `run_batch` on this call: make it point at the function name, not
    // at the attribute. The types keep their own spans, so that an unknown type is
    // reported once, in the signature.
    let span = ident.span();
    let krate_at_name = respan(krate.to_token_stream(), span);
    let run = quote_spanned!(span=> #krate_at_name::__private::run_batch::<(#(#types,)*), _>(#ident, #batch));
    quote! {
        #(#cfgs)*
        const _: () = {
            #[#krate::__private::linkme::distributed_slice(#krate::__private::TASKS)]
            #[linkme(crate = #krate::__private::linkme)]
            static __PROCPOOL_TASK: #krate::__private::TaskEntry = #krate::__private::TaskEntry::new(
                ::core::concat!(::core::module_path!(), "::", #name),
                || #krate::__private::type_id_of_val(&#ident),
                |#batch| #run,
            );
        };
    }
}

/// `tokens` with every span set to `span`.
///
/// Groups are rebuilt with the new span on their delimiters and, recursively, on
/// their contents; a path to procpool has none in practice, but nothing is left
/// with its old span if one does.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            if let TokenTree::Group(group) = &token {
                let mut inner = Group::new(group.delimiter(), respan(group.stream(), span));
                inner.set_span(span);
                token = TokenTree::Group(inner);
            }
            token.set_span(span);
            token
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expands `#[pool_task(args)]` on `item`, both given as source text.
    fn expand_str(args: &str, item: &str) -> TokenStream {
        expand(args.parse().unwrap(), item.parse().unwrap())
    }

    /// The errors of `#[pool_task(args)] item`: each message with the source text its
    /// span covers (`None` for the attribute itself).
    fn errors(args: &str, item: &str) -> Vec<(String, Option<String>)> {
        crate::error::testing::errors(
            "pool_task",
            "#[pool_task] goes on a free `fn`",
            check,
            args,
            item,
        )
    }

    fn error(message: &str, at: &str) -> (String, Option<String>) {
        (message.to_owned(), Some(at.to_owned()))
    }

    fn owned(suggestion: &str) -> String {
        format!("parameters are sent to another process and must be owned: {suggestion}")
    }

    #[test]
    fn registers_the_function_after_it() {
        let output = expand_str("", "pub fn square(number: u64) -> u64 { number * number }");
        let expected = quote! {
            pub fn square(number: u64) -> u64 { number * number }
            const _: () = {
                #[::procpool::__private::linkme::distributed_slice(::procpool::__private::TASKS)]
                #[linkme(crate = ::procpool::__private::linkme)]
                static __PROCPOOL_TASK: ::procpool::__private::TaskEntry = ::procpool::__private::TaskEntry::new(
                    ::core::concat!(::core::module_path!(), "::", "square"),
                    || ::procpool::__private::type_id_of_val(&square),
                    |batch| ::procpool::__private::run_batch::<(u64,), _>(square, batch),
                );
            };
        };
        assert_eq!(output.to_string(), expected.to_string());
    }

    #[test]
    fn builds_the_argument_tuple_in_order() {
        let tuple = |item: &str| {
            let output = expand_str("", item).to_string();
            let start = output.find("run_batch :: < ").unwrap() + "run_batch :: < ".len();
            let end = output[start..].find(" , _ >").unwrap();
            output[start..start + end].to_owned()
        };
        assert_eq!(tuple("fn zero() {}"), "()");
        assert_eq!(tuple("fn one(a: u64) {}"), "(u64 ,)");
        assert_eq!(tuple("fn two(a: u64, b: String) {}"), "(u64 , String ,)");
        assert_eq!(
            tuple("fn three(mut a: Vec<u8>, _: (u8, i8), _c: Option<Box<u8>>) {}"),
            "(Vec < u8 > , (u8 , i8) , Option < Box < u8 > > ,)"
        );
    }

    #[test]
    fn uses_the_crate_path() {
        let output =
            expand_str("crate = ::my_reexport::procpool", "fn f(x: u8) -> u8 { x }").to_string();
        assert_eq!(
            output.matches(":: procpool :: __private ::").count(),
            7,
            "{output}"
        );
        assert_eq!(
            output
                .matches(":: my_reexport :: procpool :: __private ::")
                .count(),
            7,
            "{output}"
        );
    }

    #[test]
    fn keeps_the_function_exactly_and_names_it_without_raw_prefix() {
        let item =
            "/// Docs.\n#[inline] pub(crate) const fn r#type(mut x: u8, _: u8) -> u8 { x += 1; x }";
        let output = expand_str("", item).to_string();
        let item_tokens: TokenStream = item.parse().unwrap();
        assert!(output.starts_with(&item_tokens.to_string()), "{output}");
        assert!(output.contains(r#""::" , "type""#), "{output}");
        assert!(output.contains("type_id_of_val (& r#type)"), "{output}");
    }

    #[test]
    fn points_unmet_bounds_at_the_function_name() {
        fn find(tokens: TokenStream, name: &str) -> Option<Span> {
            tokens.into_iter().find_map(|token| match token {
                TokenTree::Ident(ident) if ident == name => Some(ident.span()),
                TokenTree::Group(group) => find(group.stream(), name),
                _ => None,
            })
        }
        let output = expand_str("", "fn square(number: u64) -> u64 { number * number }");
        let run_batch = find(output, "run_batch").unwrap();
        assert_eq!(run_batch.source_text().as_deref(), Some("square"));
    }

    #[test]
    fn copies_cfg_onto_the_registration() {
        let output = expand_str("", "#[cfg(unix)] #[inline] fn f() {}").to_string();
        assert!(output.contains("} # [cfg (unix)] const _"), "{output}");
        assert!(!output.contains("# [inline] const _"), "{output}");
    }

    #[test]
    fn accepts_plain_functions() {
        for item in [
            "fn f() {}",
            "pub const fn f(mut x: u64, _: u8, _y: u8) -> u64 { x }",
            "extern \"Rust\" fn f(x: Cow<'static, str>) -> Vec<Option<(u8, String)>> { Vec::new() }",
            "fn f(a: u8, b: u8, c: u8, d: u8, e: u8, f: u8, g: u8, h: u8, i: u8, j: u8, k: u8, l: u8) {}",
            "fn f(callback: fn(&str) -> usize, object: Box<dyn Fn(&str)>, array: [u8; N]) {}",
            "fn f(x: u8) -> u8 where u8: Copy { x }",
        ] {
            assert_eq!(errors("", item), vec![], "{item}");
        }
    }

    #[test]
    fn rejects_async() {
        assert_eq!(
            errors("", "pub async fn f() {}"),
            [error(
                "a pool task cannot be async: workers call it synchronously",
                "async"
            )]
        );
    }

    #[test]
    fn rejects_unsafe_and_foreign_abis() {
        assert_eq!(
            errors("", "unsafe extern \"C\" fn f() {}"),
            [
                error(
                    "a pool task cannot be unsafe: workers call it with whatever the parent sends, \
                     so write a safe function that upholds the contract",
                    "unsafe"
                ),
                error(
                    "a pool task cannot have the `extern \"C\"` ABI: workers call it as a Rust function",
                    "extern \"C\""
                ),
            ]
        );
        assert_eq!(
            errors("", "extern fn f() {}"),
            [error(
                "a pool task cannot have the `extern` ABI: workers call it as a Rust function",
                "extern"
            )]
        );
    }

    #[test]
    fn rejects_generics_of_every_kind() {
        assert_eq!(
            errors("", "fn f<T: Clone>(x: T) {}"),
            [error(GENERIC, "<T: Clone>")]
        );
        assert_eq!(
            errors("", "fn f<'a>(x: Cow<'a, str>) {}"),
            [error(GENERIC, "<'a>")]
        );
        assert_eq!(
            errors("", "fn f<const N: usize>() {}"),
            [error(GENERIC, "<const N: usize>")]
        );
        assert_eq!(
            errors("", "fn f(x: impl Into<u64>) {}"),
            [error(GENERIC, "impl Into<u64>")]
        );
        assert_eq!(
            errors("", "fn f(x: Vec<impl Clone>) {}"),
            [error(GENERIC, "impl Clone")]
        );
        assert_eq!(
            errors("", "fn f(x: Cow<'_, str>) {}"),
            [error(GENERIC, "'_")]
        );
    }

    #[test]
    fn rejects_methods() {
        for receiver in ["self", "&self", "&mut self", "mut self", "self: Box<Self>"] {
            assert_eq!(
                errors("", &format!("fn f({receiver}, x: u8) {{}}")),
                [error(
                    "a pool task must be a free function, not a method",
                    receiver
                )]
            );
        }
    }

    #[test]
    fn rejects_patterns_and_suggests_a_name() {
        assert_eq!(
            errors("", "fn f((a, b): (u64, u64)) {}"),
            [error(
                "use a plain name for each parameter, e.g. `pair: (u64, u64)`",
                "(a, b)"
            )]
        );
        assert_eq!(
            errors(
                "",
                "fn f(PointPair { x, .. }: PointPair, [a, b]: [u8; 2], n @ 1..: u8) {}"
            ),
            [
                error(
                    "use a plain name for each parameter, e.g. `point_pair: PointPair`",
                    "PointPair { x, .. }"
                ),
                error(
                    "use a plain name for each parameter, e.g. `items: [u8; 2]`",
                    "[a, b]"
                ),
                error(
                    "use a plain name for each parameter, e.g. `n: u8`",
                    "n @ 1.."
                ),
            ]
        );
    }

    #[test]
    fn rejects_borrowed_parameters_with_an_owned_suggestion() {
        assert_eq!(
            errors(
                "",
                "fn f(name: &str, bytes: &'static [u8], path: &std::path::Path, point: &mut Point) {}"
            ),
            [
                error(&owned("use `String` instead of `&str`"), "&str"),
                error(
                    &owned("use `Vec<u8>` instead of `&'static [u8]`"),
                    "&'static [u8]"
                ),
                error(
                    &owned("use `PathBuf` instead of `&std::path::Path`"),
                    "&std::path::Path"
                ),
                error(&owned("use `Point` instead of `&mut Point`"), "&mut Point"),
            ]
        );
        assert_eq!(
            errors("", "fn f(items: Vec<&str>, any: &dyn Debug) {}"),
            [
                error(&owned("use `String` instead of `&str`"), "&str"),
                error(
                    &owned("use an owned type such as String or Vec<T>"),
                    "&dyn Debug"
                ),
            ]
        );
    }

    #[test]
    fn rejects_borrowed_and_opaque_results() {
        assert_eq!(
            errors("", "fn f() -> &'static str { \"\" }"),
            [error(
                "the result is sent back to the parent process and must be owned: \
                 use `String` instead of `&'static str`",
                "&'static str"
            )]
        );
        assert_eq!(
            errors("", "fn f() -> impl Serialize { 1 }"),
            [error(
                "a pool task cannot return `impl Trait`: the parent decodes the result, \
                 so its type must be concrete",
                "impl Serialize"
            )]
        );
    }

    #[test]
    fn rejects_more_than_twelve_parameters() {
        let item = "fn f(a: u8, b: u8, c: u8, d: u8, e: u8, f: u8, g: u8, h: u8, i: u8, j: u8, \
                    k: u8, l: u8, m: u8, n: u8) {}";
        assert_eq!(
            errors("", item),
            [error(
                "a pool task takes at most 12 parameters, this one takes 14: \
                 group some of them in a struct or a tuple",
                "m: u8, n: u8"
            )]
        );
    }

    #[test]
    fn rejects_variadics() {
        assert_eq!(
            errors("", "unsafe extern \"C\" fn f(x: u8, ...) {}").last(),
            Some(&error("a pool task cannot be variadic", "..."))
        );
    }

    #[test]
    fn rejects_other_items_at_the_attribute() {
        assert_eq!(
            errors("", "struct Square(u64);"),
            [(
                "#[pool_task] goes on a free `fn`, not on a struct".to_owned(),
                None
            )]
        );
    }

    #[test]
    fn collects_every_error_at_once() {
        let found = errors(
            "krate = ::x",
            "async unsafe fn f<T>(&self, (a, b): (T, T), s: &str) {}",
        );
        let spans: Vec<_> = found.iter().map(|(_, at)| at.as_deref().unwrap()).collect();
        assert_eq!(
            spans,
            ["krate", "async", "unsafe", "<T>", "&self", "(a, b)", "&str"]
        );
    }

    #[test]
    fn emits_the_item_unchanged_with_the_errors() {
        let item = "async fn f(s: &str) { body(s) }";
        let output = expand_str("", item).to_string();
        let item_tokens: TokenStream = item.parse().unwrap();
        assert!(output.starts_with(&item_tokens.to_string()), "{output}");
        assert_eq!(output.matches("compile_error !").count(), 2, "{output}");
        assert!(!output.contains("const _"), "{output}");
    }
}
