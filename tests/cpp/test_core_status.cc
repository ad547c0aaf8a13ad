// Errors: FASTLM_CHECK -> Error, FASTLM_CHECK_ARG -> InvalidArgument (a ValueError in Python),
// FASTLM_ASSERT names the failed condition and where; messages concatenate their arguments.
#include <gtest/gtest.h>

#include <string>

#include "core/status.h"

namespace fastlm {
namespace {

template <typename E, typename F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  return "<no exception>";
}

TEST(CoreStatus, CheckThrowsErrorWithConcatenatedMessage) {
  EXPECT_NO_THROW(FASTLM_CHECK(1 + 1 == 2, "unused"));
  const std::string msg =
      message_of<Error>([] { FASTLM_CHECK(false, "value ", 42, " is not ", 1.5, '!'); });
  EXPECT_EQ(msg, "value 42 is not 1.5!");
  // Plain errors are not argument errors: Python maps them to RuntimeError, not ValueError.
  EXPECT_THROW(
      {
        try {
          FASTLM_CHECK(false, "x");
        } catch (const InvalidArgument&) {
          FAIL() << "FASTLM_CHECK threw InvalidArgument";
        }
      },
      Error);
}

TEST(CoreStatus, CheckArgThrowsInvalidArgument) {
  EXPECT_NO_THROW(FASTLM_CHECK_ARG(true, "unused"));
  EXPECT_EQ(message_of<InvalidArgument>([] { FASTLM_CHECK_ARG(false, "n must be > 0, got ", -3); }),
            "n must be > 0, got -3");
  // InvalidArgument is an Error is a std::runtime_error: generic handlers still catch it.
  EXPECT_THROW(FASTLM_CHECK_ARG(false, "x"), Error);
  EXPECT_THROW(FASTLM_CHECK_ARG(false, "x"), std::runtime_error);
}

TEST(CoreStatus, AssertNamesConditionAndLocation) {
  const int blocks = 3;
  const std::string msg = message_of<Error>([&] { FASTLM_ASSERT(blocks < 2); });
  EXPECT_NE(msg.find("internal invariant failed: blocks < 2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("test_core_status.cc:"), std::string::npos) << msg;
}

TEST(CoreStatus, ConditionEvaluatedOnce) {
  int calls = 0;
  auto check = [&] { return ++calls > 0; };
  FASTLM_CHECK(check(), "unused");
  FASTLM_CHECK_ARG(check(), "unused");
  FASTLM_ASSERT(check());
  EXPECT_EQ(calls, 3);
}

}  // namespace
}  // namespace fastlm
