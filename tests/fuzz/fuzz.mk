# libFuzzer targets, built with clang (the main meson build uses g++).
# Run through build.sh:  make -f tests/fuzz/fuzz.mk -C <repo root> OUT=<build dir>
# Every object depends on the headers it includes (-MMD), so rebuilds are
# incremental.

CXX := clang++-14
OUT ?= build-fuzz

SANITIZE := -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
# -fsanitize=function makes clang 14 fail on coroutine frames ("Cannot
# represent a difference across sections"); the rest of UBSan is kept.
SANITIZE += -fno-sanitize=function
CPPFLAGS := -I. -DSPDLOG_SHARED_LIB -DSPDLOG_COMPILED_LIB -DSPDLOG_FMT_EXTERNAL \
            -DBOOST_ASIO_NO_DEPRECATED -DBOOST_ASIO_DISABLE_BOOST_COROUTINE
CXXFLAGS = -std=c++20 -O1 -g -fno-omit-frame-pointer $(SANITIZE)
# Harness code is held to the project's warning rules; project sources are
# built as they are (their warnings are checked by the g++ build).
HARNESS_WARN := -Wall -Wextra -Werror

# The qcow2 libraries are taken whole (every .cpp of format/, engine/,
# check/, as their meson.build files do): they grow files while we fuzz them,
# and a stale explicit list breaks the link. Everything else is listed.
PROTOCOL_SRC := server/protocol.cpp
FORMAT_SRC := $(sort $(wildcard qcow2/format/*.cpp))
CHECK_ONLY_SRC := io/uring.cpp io/uring_file.cpp $(sort $(wildcard qcow2/meta/*.cpp)) \
                  $(sort $(wildcard qcow2/check/*.cpp))
ENGINE_SRC := $(FORMAT_SRC) common/result.cpp io/memory_file.cpp backend/block_backend.cpp \
              backend/raw_backend.cpp \
              $(sort $(wildcard qcow2/engine/*.cpp)) $(sort $(wildcard qcow2/defrag/*.cpp)) \
              qcow2/qcow2_backend.cpp $(CHECK_ONLY_SRC)
CHECK_SRC := $(FORMAT_SRC) common/result.cpp io/memory_file.cpp $(CHECK_ONLY_SRC)

obj = $(patsubst %.cpp,$(OUT)/obj/%.o,$(1))

TARGETS := $(OUT)/fuzz_protocol $(OUT)/fuzz_qcow2_header $(OUT)/fuzz_qcow2_open \
           $(OUT)/fuzz_qcow2_check
all: $(TARGETS)

$(OUT)/fuzz_protocol: $(call obj,tests/fuzz/fuzz_protocol.cpp $(PROTOCOL_SRC))
	$(CXX) $(CXXFLAGS) -o $@ $^

$(OUT)/fuzz_qcow2_header: $(call obj,tests/fuzz/fuzz_qcow2_header.cpp $(FORMAT_SRC))
	$(CXX) $(CXXFLAGS) -o $@ $^ -lfmt -lz -lzstd

$(OUT)/fuzz_qcow2_open: $(call obj,tests/fuzz/fuzz_qcow2_open.cpp $(ENGINE_SRC))
	$(CXX) $(CXXFLAGS) -o $@ $^ -lspdlog -lfmt -lz -lzstd -luring -pthread

$(OUT)/fuzz_qcow2_check: $(call obj,tests/fuzz/fuzz_qcow2_check.cpp $(CHECK_SRC))
	$(CXX) $(CXXFLAGS) -o $@ $^ -lspdlog -lfmt -lz -lzstd -luring -pthread

$(OUT)/obj/tests/fuzz/%.o: tests/fuzz/%.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(CPPFLAGS) $(CXXFLAGS) $(HARNESS_WARN) -MMD -MP -c -o $@ $<

$(OUT)/obj/%.o: %.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(CPPFLAGS) $(CXXFLAGS) -MMD -MP -c -o $@ $<

-include $(shell find $(OUT)/obj -name '*.d' 2>/dev/null)

.PHONY: all
.DELETE_ON_ERROR:
