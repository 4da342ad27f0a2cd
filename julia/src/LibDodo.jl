# Private raw layer: one `ccall` per C API function of dodo.h that Dodo.jl uses, nothing else
# (dodo_closure_create_from_memory, dodo_reset_counters, dodo_api_version, dodo_build_id,
# dodo_status_message and dodo_cell_status_name have none yet). The public API is in Dodo.jl. The library is found through DODO_LIBRARY (path of libdodo.so), else through the
# installed Python package (`python3 -m dodo info --lib-dir`), else the system loader.
module LibDodo

using Libdl

const dodo_status = Cint
const DODO_OK = Cint(0)

function find_library()
    path = get(ENV, "DODO_LIBRARY", "")
    isempty(path) || return path
    try
        lib_dir = readchomp(`python3 -m dodo info --lib-dir`)
        candidate = joinpath(lib_dir, "libdodo.so")
        isfile(candidate) && return candidate
    catch
    end
    return "libdodo"
end

const libdodo = Ref{String}("")
function library()
    isempty(libdodo[]) && (libdodo[] = find_library())
    return libdodo[]
end

# struct dodo_options (dodo.h), same field order.
mutable struct Options
    struct_size::Csize_t
    threads::Cint
    chunk_size::Cint
    lebedev_order::Cint
    z_method::Ptr{Cchar}
    max_flux_factor::Cdouble
    onnxruntime_library::Ptr{Cchar}
    run_self_test::Cint
    device::Cint     # DODO_DEVICE_CPU = 0, DODO_DEVICE_CUDA = 1
    device_id::Cint
end
Options() = Options(0, 0, 0, 0, C_NULL, 0.0, C_NULL, 0, 0, 0)

struct Counters
    cells::UInt64
    rejected::UInt64
    no_crossing::UInt64
    box3d_limited::UInt64
    network_nonfinite::UInt64
    correction_limited::UInt64
end

version() = unsafe_string(ccall((:dodo_version, library()), Cstring, ()))
status_name(status) = unsafe_string(ccall((:dodo_status_name, library()), Cstring, (Cint,), status))
options_init!(options::Options) =
    ccall((:dodo_options_init_sized, library()), Cvoid, (Ref{Options}, Csize_t), options, sizeof(Options))

function closure_create(model_path, options::Options, handle::Ref{Ptr{Cvoid}}, buffer::Vector{UInt8})
    ccall((:dodo_closure_create, library()), Cint,
          (Cstring, Ref{Options}, Ref{Ptr{Cvoid}}, Ptr{UInt8}, Csize_t),
          model_path === nothing ? C_NULL : model_path, options, handle, buffer, length(buffer))
end

closure_destroy(handle::Ptr{Cvoid}) = ccall((:dodo_closure_destroy, library()), Cvoid, (Ptr{Cvoid},), handle)

function apply(handle, n, F_init, u, F_pred, cell_status)
    ccall((:dodo_apply, library()), Cint,
          (Ptr{Cvoid}, Csize_t, Ptr{Cdouble}, Ptr{Cptrdiff_t}, Ptr{Cdouble}, Ptr{Cptrdiff_t}, Ptr{Cdouble},
           Ptr{Cptrdiff_t}, Ptr{UInt32}),
          handle, n, F_init, C_NULL, u === nothing ? C_NULL : u, C_NULL, F_pred, C_NULL,
          cell_status === nothing ? C_NULL : cell_status)
end

function apply_diagnostics(handle, n, F_init, u, F_pred, cell_status, growth_rate, uncertainty)
    ccall((:dodo_apply_diagnostics, library()), Cint,
          (Ptr{Cvoid}, Csize_t, Ptr{Cdouble}, Ptr{Cptrdiff_t}, Ptr{Cdouble}, Ptr{Cptrdiff_t}, Ptr{Cdouble},
           Ptr{Cptrdiff_t}, Ptr{UInt32}, Ptr{Cdouble}, Ptr{Cdouble}),
          handle, n, F_init, C_NULL, u === nothing ? C_NULL : u, C_NULL, F_pred, C_NULL,
          cell_status === nothing ? C_NULL : cell_status, growth_rate === nothing ? C_NULL : growth_rate,
          uncertainty === nothing ? C_NULL : uncertainty)
end

self_test(handle, worst::Ref{Cdouble}) =
    ccall((:dodo_self_test, library()), Cint, (Ptr{Cvoid}, Ref{Cdouble}), handle, worst)
get_counters(handle, counters::Ref{Counters}) =
    ccall((:dodo_get_counters, library()), Cint, (Ptr{Cvoid}, Ref{Counters}), handle, counters)
has_model(handle) = ccall((:dodo_has_model, library()), Cint, (Ptr{Cvoid},), handle)
get_metadata(handle, key, buffer::Vector{UInt8}) =
    ccall((:dodo_get_metadata, library()), Clong, (Ptr{Cvoid}, Cstring, Ptr{UInt8}, Csize_t),
          handle, key, buffer, length(buffer))
last_error(handle, buffer::Vector{UInt8}) =
    ccall((:dodo_last_error, library()), Csize_t, (Ptr{Cvoid}, Ptr{UInt8}, Csize_t), handle, buffer, length(buffer))

end # module LibDodo
