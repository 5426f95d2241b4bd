// Host emulation stub: see emu.h.
#pragma once
