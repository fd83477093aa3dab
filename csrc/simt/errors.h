// The emulator's CUDA error state, per host thread like the runtime's: the first error since it
// was last read, with a message that says what went wrong and where.
#pragma once
#include <string>

namespace kx {
namespace simt {

void record_error(int code, const std::string& message);  // keeps the first until it is read
int peek_error();
int take_error();  // returns and clears
// The message of the error most recently recorded with this code, or null.
const char* error_message(int code);

}  // namespace simt
}  // namespace kx
