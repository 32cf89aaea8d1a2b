# Warnings for every target of ours (curl's PickyWarnings, trimmed).
set(TG_WARNINGS
  -Wall -Wextra -Werror
  -Wshadow -Wpointer-arith -Wstrict-prototypes -Wmissing-prototypes
  -Wwrite-strings -Wformat=2 -Wundef -Wvla
  -Wno-unused-parameter -Wno-missing-field-initializers)
if(CMAKE_C_COMPILER_ID MATCHES "GNU")
  list(APPEND TG_WARNINGS -Wlogical-op -Wduplicated-cond -Wcast-align)
endif()

function(tg_warnings target)
  target_compile_options(${target} PRIVATE ${TG_WARNINGS})
endfunction()
