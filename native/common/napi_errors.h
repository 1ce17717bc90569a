// Shared by the native addons (native/cpu, native/cuda): argument errors and the wrapper that turns
// C++ exceptions into JavaScript errors (TypeError for bad arguments, RangeError for out-of-range
// indices, Error otherwise).
#pragma once
#include <napi.h>

#include <stdexcept>

namespace ssd_napi {

struct ArgError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

using Fn = Napi::Value (*)(const Napi::CallbackInfo&);

template <Fn F>
Napi::Value wrap(const Napi::CallbackInfo& info) {
  try {
    return F(info);
  } catch (const Napi::Error&) {
    throw;
  } catch (const ArgError& e) {
    throw Napi::TypeError::New(info.Env(), e.what());
  } catch (const std::out_of_range& e) {
    throw Napi::RangeError::New(info.Env(), e.what());
  } catch (const std::exception& e) {
    throw Napi::Error::New(info.Env(), e.what());
  }
}

}  // namespace ssd_napi
