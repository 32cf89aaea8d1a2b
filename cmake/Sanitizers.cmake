# -DTG_SANITIZE=ON builds everything with AddressSanitizer and
# UndefinedBehaviorSanitizer (libuv's ASAN/UBSAN options, folded into one).
option(TG_SANITIZE "Build with address and undefined behaviour sanitizers" OFF)
option(TG_FUZZ "Build libFuzzer targets (needs clang)" OFF)
if(TG_SANITIZE)
  add_compile_options(-fsanitize=address,undefined -fno-sanitize-recover=undefined
                      -fno-omit-frame-pointer)
  add_link_options(-fsanitize=address,undefined)
endif()
if(TG_FUZZ)
  # Coverage instrumentation for every library the fuzzers exercise (the
  # drivers add -fsanitize=fuzzer, which also links libFuzzer's main).
  add_compile_options(-fsanitize=fuzzer-no-link)
endif()
